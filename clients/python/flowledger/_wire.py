"""Generated messages → :mod:`flowledger.types` (the SDK's only contact with protobuf types).

Enums map by name, so a value added to the contract but not to the SDK raises at import time in
the tests instead of being misread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from flowledger import types as t
from flowledger.errors import InternalError
from flowledger.v1 import common_pb2, engine_pb2

_E = TypeVar("_E", t.DefinitionState, t.FlowStatus, t.StepStatus, t.EventType)

DEFINITION_STATES: dict[int, t.DefinitionState] = {
    engine_pb2.DefinitionState.Value(f"DEFINITION_STATE_{s.name}"): s for s in t.DefinitionState
}
FLOW_STATUSES: dict[int, t.FlowStatus] = {
    common_pb2.FlowStatus.Value(f"FLOW_STATUS_{s.name}"): s for s in t.FlowStatus
}
STEP_STATUSES: dict[int, t.StepStatus] = {
    engine_pb2.StepStatus.Value(f"STEP_STATUS_{s.name}"): s for s in t.StepStatus
}
EVENT_TYPES: dict[int, t.EventType] = {
    common_pb2.EventType.Value(f"EVENT_TYPE_{e.name}"): e for e in t.EventType
}
FLOW_STATUS_NUMBERS = {
    s: common_pb2.FlowStatus.Value(f"FLOW_STATUS_{s.name}") for s in t.FlowStatus
}


def _enum(table: dict[int, _E], number: int, what: str) -> _E:
    try:
        return table[number]
    except KeyError:
        raise InternalError(
            f"the engine sent {what} {number}, unknown to this SDK version: upgrade the SDK",
            reason="UNKNOWN_ENUM_VALUE",
        ) from None


def _time(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    ts = getattr(message, name)
    assert isinstance(ts, timestamp_pb2.Timestamp)
    return ts.ToDatetime(tzinfo=UTC)


def definition(pb: engine_pb2.DefinitionVersion) -> t.DefinitionVersion:
    return t.DefinitionVersion(
        namespace=pb.namespace,
        name=pb.name,
        version=pb.version,
        state=_enum(DEFINITION_STATES, pb.state, "definition state"),
        definition_hash=pb.definition_hash,
        steps=tuple(
            t.DefinitionStep(s.id, s.type, s.config_json, s.spec_json) for s in pb.steps
        ),
        change_note=pb.change_note,
        created_by=pb.created_by,
        created_at=_time(pb, "created_at"),
        published_at=_time(pb, "published_at"),
        history=tuple(
            t.DefinitionHistoryEntry(
                _enum(DEFINITION_STATES, h.state, "definition state"), h.change_note, h.actor,
                _time(h, "at"),
            )
            for h in pb.history
        ),
    )


def flow(pb: common_pb2.Flow) -> t.Flow:
    return t.Flow(
        flow_id=pb.flow_id,
        namespace=pb.namespace,
        name=pb.name,
        status=_enum(FLOW_STATUSES, pb.status, "flow status"),
        metadata_json=pb.metadata_json,
        parent_flow_id=pb.parent_flow_id or None,
        fork_version=pb.fork_version,
        version=pb.version,
        created_by=pb.created_by,
        created_at=_time(pb, "created_at"),
        updated_at=_time(pb, "updated_at"),
        deleted=pb.deleted,
        generation=pb.generation,
    )


def _wait(pb: engine_pb2.StepWait) -> t.StepWait:
    return t.StepWait(signal_name=pb.signal_name, task_queue=pb.task_queue,
                      until=_time(pb, "until"))  # fmt: skip


def flow_view(pb: engine_pb2.FlowView) -> t.FlowView:
    return t.FlowView(
        flow=flow(pb.flow),
        definition_name=pb.definition_name,
        definition_version=pb.definition_version,
        definition_hash=pb.definition_hash,
        cursor=pb.cursor,
        steps=tuple(
            t.StepView(
                step_id=s.step_id,
                status=_enum(STEP_STATUSES, s.status, "step status"),
                fingerprint=s.fingerprint or None,
                output_hashes=tuple(s.output_hashes),
                attempts=s.attempts,
                wait=_wait(s.wait) if s.HasField("wait") else None,
            )
            for s in pb.steps
        ),
        flow_fingerprint=pb.flow_fingerprint or None,
        variants=pb.variants,
        started_by=pb.started_by,
    )


def event(pb: common_pb2.Event) -> t.Event:
    return t.Event(
        seq=pb.seq,
        flow_id=pb.flow_id,
        version=pb.version,
        type=_enum(EVENT_TYPES, pb.type, "event type"),
        payload_json=pb.payload_json,
        ts=_time(pb, "ts"),
        command_id=pb.command_id,
    )


def watch_update(pb: engine_pb2.WatchFlowResponse) -> t.WatchUpdate:
    return t.WatchUpdate(
        tuple(event(e) for e in pb.events), _enum(FLOW_STATUSES, pb.status, "flow status")
    )


def artifacts(pb: engine_pb2.FetchArtifactsResponse) -> t.Artifacts:
    return t.Artifacts(
        found=tuple(
            t.Artifact(a.hash, a.kind, a.payload_json, a.metadata_json, a.produced_in_seq)
            for a in pb.artifacts
        ),
        missing=tuple(pb.missing),
    )


def verification(pb: engine_pb2.VerifyFlowResponse) -> t.Verification:
    divergence = None
    if pb.HasField("divergence"):
        d = pb.divergence
        divergence = t.Divergence(d.version, d.step_id, d.kind, d.recorded, d.recomputed, d.detail)
    return t.Verification(pb.ok, pb.events_checked, pb.artifacts_checked, divergence)
