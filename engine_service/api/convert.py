"""The one place where EngineService protobuf messages and engine domain values meet.

Requests are converted only after :mod:`engine_service.api.validation` accepted them. Enums map
by name (``DEFINITION_STATE_DRAFT`` ↔ ``DefinitionState.DRAFT``), so a value added on one side
only fails the mapping at import instead of being misnumbered. Shared messages of common.proto
(Flow, Event, Artifact) are converted by :mod:`flowledger_core.wire.store`, as for the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from google.protobuf import timestamp_pb2

from engine_service.api.definitions import DefinitionChange, DocumentFormat, stored_steps
from engine_service.api.flows import BranchRequest, FlowView, StartRequest
from engine_service.api.step_views import StepWait, ViewStatus, step_view_status
from engine_service.api.watch import Batch, EventForm
from engine_service.run.verify import VerifyReport
from flowledger.canonical import JsonValue, canonical_bytes
from flowledger.v1 import common_pb2, engine_pb2
from flowledger_core.domain import (
    ArtifactLookup,
    DefinitionPage,
    DefinitionState,
    DefinitionTransition,
    EventType,
    FlowFilter,
    FlowPage,
    FlowStatus,
    Page,
    StoredDefinition,
)
from flowledger_core.ports import EventStore
from flowledger_core.wire import store as common
from flowledger_core.wire.store_client import event_type_from_pb

DEFAULT_PAGE_SIZE = 100

_STATE_TO_PB: dict[DefinitionState, engine_pb2.DefinitionState.ValueType] = {
    s: engine_pb2.DefinitionState.Value(f"DEFINITION_STATE_{s.name}") for s in DefinitionState
}
_STEP_STATUS_TO_PB: dict[ViewStatus, engine_pb2.StepStatus.ValueType] = {
    s: engine_pb2.StepStatus.Value(f"STEP_STATUS_{s.name}") for s in ViewStatus
}
FLOW_STATUS_TO_PB: dict[FlowStatus, common_pb2.FlowStatus.ValueType] = {
    s: common_pb2.FlowStatus.Value(f"FLOW_STATUS_{s.name}") for s in FlowStatus
}
_FORMATS: dict[int, DocumentFormat] = {
    engine_pb2.DEFINITION_FORMAT_UNSPECIFIED: DocumentFormat.JSON,
    engine_pb2.DEFINITION_FORMAT_JSON: DocumentFormat.JSON,
    engine_pb2.DEFINITION_FORMAT_YAML: DocumentFormat.YAML,
}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# -- requests → domain ---------------------------------------------------------------------------


def document_format(number: int) -> DocumentFormat:
    return _FORMATS[number]


def definition_change(
    req: engine_pb2.PublishDefinitionVersionRequest
    | engine_pb2.ArchiveDefinitionVersionRequest
    | engine_pb2.RollbackDefinitionRequest,
) -> DefinitionChange:
    return DefinitionChange(req.namespace, req.name, req.version, req.change_note, req.actor)


def page(size: int, token: str) -> Page:
    return Page(size=size or DEFAULT_PAGE_SIZE, token=token)


def close_only(req: engine_pb2.WatchFlowRequest) -> bool:
    """Whether the watch streams only the event that ends the flow (the filter was validated)."""
    return req.filter == engine_pb2.WATCH_FILTER_CLOSE_EVENT


def start_request(req: engine_pb2.StartFlowRequest, flow_input: JsonValue) -> StartRequest:
    """``flow_input``: ``input_json`` as :func:`validation.check_start_flow` parsed it."""
    return StartRequest(
        namespace=req.namespace,
        definition_name=req.definition_name,
        version=req.version,
        input=flow_input,
        idempotency_key=req.idempotency_key,
        started_by=req.started_by,
    )


def branch_request(req: engine_pb2.BranchFlowRequest) -> BranchRequest:
    return BranchRequest(
        namespace=req.namespace,
        flow_id=req.flow_id,
        at_step=req.at_step,
        params_json=dict(req.params_json),
        idempotency_key=req.idempotency_key,
        started_by=req.started_by,
    )


def flow_filter(req: engine_pb2.ListFlowRunsRequest) -> FlowFilter:
    statuses = tuple(
        status for n in req.statuses if (status := common.flow_status_from_number(n)) is not None
    )
    return FlowFilter(
        namespace=req.namespace,
        statuses=statuses,
        name=req.definition_name or None,
        parent_flow_id=req.parent_flow_id or None,
        flow_id_prefix=req.flow_id_prefix,
    )


# -- domain → responses --------------------------------------------------------------------------


def _history_entry(entry: DefinitionTransition) -> engine_pb2.DefinitionHistoryEntry:
    return engine_pb2.DefinitionHistoryEntry(
        state=_STATE_TO_PB[entry.state],
        change_note=entry.change_note,
        actor=entry.actor,
        at=_timestamp(entry.at),
    )


def definition_to_pb(stored: StoredDefinition) -> engine_pb2.DefinitionVersion:
    steps = [
        engine_pb2.DefinitionStep(
            id=spec.id,
            type=spec.type,
            config_json=canonical_bytes(dict(spec.params)).decode("utf-8"),
            spec_json=canonical_bytes(spec.to_dict()).decode("utf-8"),
        )
        for spec in stored_steps(stored)
    ]
    return engine_pb2.DefinitionVersion(
        namespace=stored.namespace,
        name=stored.name,
        version=stored.version,
        state=_STATE_TO_PB[stored.state],
        definition_hash=stored.definition_hash,
        steps=steps,
        change_note=stored.change_note,
        created_by=stored.created_by,
        created_at=_timestamp(stored.created_at),
        published_at=_timestamp(stored.published_at),
        history=[_history_entry(entry) for entry in stored.history],
    )


def create_definition_response(
    stored: StoredDefinition, existed: bool
) -> engine_pb2.CreateDefinitionVersionResponse:
    return engine_pb2.CreateDefinitionVersionResponse(
        version=definition_to_pb(stored), existed=existed
    )


def list_definitions_response(result: DefinitionPage) -> engine_pb2.ListDefinitionsResponse:
    return engine_pb2.ListDefinitionsResponse(
        versions=[definition_to_pb(v) for v in result.versions],
        next_page_token=result.next_token,
    )


def flow_view_to_pb(view: FlowView) -> engine_pb2.FlowView:
    state = view.state
    init = state.init
    steps = []
    for index, step in enumerate(state.steps):
        status, wait = step_view_status(state, index)
        steps.append(
            engine_pb2.StepView(
                step_id=step.step_id,
                status=_STEP_STATUS_TO_PB[status],
                fingerprint=step.fingerprint or "",
                output_hashes=list(step.output_hashes),
                attempts=step.attempt,
                wait=_wait_to_pb(wait),
            )
        )
    return engine_pb2.FlowView(
        flow=common.flow_to_pb(view.flow),
        definition_name=init.definition_name if init else view.flow.name,
        definition_version=init.definition_version if init else 0,
        definition_hash=init.definition_hash if init else "",
        cursor=state.cursor,
        steps=steps,
        flow_fingerprint=state.flow_fingerprint or "",
        variants=view.variants,
        started_by=view.flow.created_by,
    )


def _wait_to_pb(wait: StepWait | None) -> engine_pb2.StepWait | None:
    if wait is None:
        return None
    return engine_pb2.StepWait(
        signal_name=wait.signal_name, task_queue=wait.task_queue, until=_timestamp(wait.until)
    )


def list_flow_runs_response(result: FlowPage) -> engine_pb2.ListFlowRunsResponse:
    return engine_pb2.ListFlowRunsResponse(
        flows=[common.flow_to_pb(f) for f in result.flows], next_page_token=result.next_token
    )


class EventMessages(Protocol):
    """A flow's events as the store sent them: the engine's gRPC store client
    (``GrpcEventStore.read_event_messages``), resuming after the last version on a retry as
    ``read_events`` does."""

    def read_event_messages(
        self, namespace: str, flow_id: str, after_version: int = 0
    ) -> AsyncIterator[Sequence[common_pb2.Event]]: ...


def message_form(
    store: EventStore, messages: EventMessages | None
) -> EventForm[common_pb2.Event]:
    """WatchFlow's events as the response carries them. Read from ``messages`` (the store's
    own messages, forwarded: no conversion here) or, for a store without a wire (in-process),
    through the port and encoded once; kept and pushed events are encoded once."""
    if messages is not None:
        reader = messages

        def read(
            namespace: str, flow_id: str, after: int
        ) -> AsyncIterator[Sequence[common_pb2.Event]]:
            return reader.read_event_messages(namespace, flow_id, after)

    else:

        async def read(
            namespace: str, flow_id: str, after: int
        ) -> AsyncIterator[Sequence[common_pb2.Event]]:
            async for chunk in store.read_events(namespace, flow_id, after_version=after):
                yield [common.event_to_pb(e) for e in chunk]

    return EventForm(read, common.event_to_pb, _event_kind)


def _event_kind(event: common_pb2.Event) -> EventType:
    return event_type_from_pb(event.type)


def watch_response(batch: Batch[common_pb2.Event]) -> engine_pb2.WatchFlowResponse:
    # The messages are copied into the response (protobuf adds a message to a repeated field
    # by copying it); none is converted.
    return engine_pb2.WatchFlowResponse(
        events=batch.events, status=FLOW_STATUS_TO_PB[batch.status]
    )


def fetch_artifacts_response(lookup: ArtifactLookup) -> engine_pb2.FetchArtifactsResponse:
    return engine_pb2.FetchArtifactsResponse(
        artifacts=[common.artifact_to_pb(a) for a in lookup.found], missing=list(lookup.missing)
    )


def verify_response(report: VerifyReport) -> engine_pb2.VerifyFlowResponse:
    response = engine_pb2.VerifyFlowResponse(
        ok=report.ok,
        events_checked=report.events_checked,
        artifacts_checked=report.artifacts_checked,
    )
    d = report.divergence
    if d is not None:
        response.divergence.CopyFrom(
            engine_pb2.Divergence(
                version=d.version, step_id=d.step_id, kind=d.kind, recorded=d.recorded,
                recomputed=d.recomputed, detail=d.detail,
            )
        )
    return response


def hashes(values: Sequence[str]) -> tuple[str, ...]:
    # Asking twice for one hash is harmless; the store answers each once.
    return tuple(dict.fromkeys(values))
