"""Store wire conversion for callers of the store (the engine's ``GrpcEventStore``).

Domain → requests and responses → domain: the inverse of :mod:`flowledger_core.wire.store`, which
the store's servicer uses; the two live apart so that each stays one direction of one seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from flowledger.errors import InternalError
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core import domain
from flowledger_core.limits import Limits, LimitsError
from flowledger_core.wire.store import (
    EVENT_TYPE_FROM_PB,
    EVENT_TYPE_TO_PB,
    FLOW_STATUS_FROM_PB,
    FLOW_STATUS_TO_PB,
    event_type_name,
)


def event_type_from_pb(number: int) -> domain.EventType:
    """The domain type of an event type the store sent; InternalError for one this side does
    not know."""
    event_type = EVENT_TYPE_FROM_PB.get(number)
    if event_type is None:  # a newer store: the contracts disagree, nothing to retry
        raise InternalError(f"the store sent an unknown event type {event_type_name(number)}")
    return event_type


def _number_to_status(number: int) -> domain.FlowStatus:
    status = FLOW_STATUS_FROM_PB.get(number)
    if status is None:
        raise InternalError(f"the store sent an unknown flow status {number}")
    return status


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def create_flow_request(new: domain.NewFlow) -> store_pb2.CreateFlowRequest:
    return store_pb2.CreateFlowRequest(
        namespace=new.namespace,
        flow_id=new.flow_id or "",
        name=new.name,
        metadata_json=new.metadata_json,
        created_by=new.created_by,
        status=FLOW_STATUS_TO_PB[new.status],
    )


def list_flows_request(flt: domain.FlowFilter, page: domain.Page) -> store_pb2.ListFlowsRequest:
    return store_pb2.ListFlowsRequest(
        namespace=flt.namespace,
        statuses=[FLOW_STATUS_TO_PB[s] for s in flt.statuses],
        name=flt.name or "",
        parent_flow_id=flt.parent_flow_id or "",
        include_deleted=flt.include_deleted,
        page_size=page.size,
        page_token=page.token,
        flow_id_prefix=flt.flow_id_prefix,
    )


def append_request(cmd: domain.Append) -> store_pb2.AppendEventsRequest:
    request = store_pb2.AppendEventsRequest()
    _fill_append(request, cmd)
    return request


def append_stream_request(cmd: domain.Append) -> store_pb2.AppendStreamRequest:
    """An AppendStream request carrying ``cmd``; the sender sets its request_id."""
    request = store_pb2.AppendStreamRequest()
    _fill_append(request.append, cmd)
    return request


def _fill_append(out: store_pb2.AppendEventsRequest, cmd: domain.Append) -> None:
    # Filled in place (no message per event built and then copied): an engine appends a lot.
    out.namespace = cmd.namespace
    out.flow_id = cmd.flow_id
    out.expected_version = cmd.expected_version
    out.command_id = cmd.command_id
    add_event = out.events.add
    for e in cmd.events:
        add_event(type=EVENT_TYPE_TO_PB[e.type], payload_json=e.payload_json)
    if cmd.artifacts:
        add_artifact = out.artifacts.add
        for a in cmd.artifacts:
            add_artifact(
                hash=a.hash,
                kind=a.kind,
                payload_json=a.payload_json,
                metadata_json=a.metadata_json or "",
                event_index=a.event_index,
            )
    if cmd.new_status:
        out.new_status = FLOW_STATUS_TO_PB[cmd.new_status]
    if cmd.fencing_token:
        out.fencing_token = cmd.fencing_token
    if cmd.wake_at is not None:
        out.wake_at.FromDatetime(cmd.wake_at)
    if cmd.task_queue:
        out.task_queue = cmd.task_queue


def subscribe_request(
    namespace: str, after_cursor: str, types: Sequence[domain.EventType], chunk_size: int
) -> store_pb2.SubscribeRequest:
    return store_pb2.SubscribeRequest(
        namespace=namespace,
        after_cursor=after_cursor,
        types=[EVENT_TYPE_TO_PB[t] for t in types],
        chunk_size=chunk_size,
    )


def create_branch_request(new: domain.NewBranch) -> store_pb2.CreateBranchRequest:
    return store_pb2.CreateBranchRequest(
        namespace=new.namespace,
        parent_flow_id=new.parent_flow_id,
        fork_version=new.fork_version,
        flow_id=new.flow_id or "",
        name=new.name,
        metadata_json=new.metadata_json,
        created_by=new.created_by,
        status=FLOW_STATUS_TO_PB[new.status],
    )


def prune_request(cmd: domain.Prune) -> store_pb2.PruneFlowRequest:
    return store_pb2.PruneFlowRequest(
        namespace=cmd.namespace,
        flow_id=cmd.flow_id,
        keep_through_version=cmd.keep_through_version,
        expected_version=cmd.expected_version,
        command_id=cmd.command_id,
        pruned_by=cmd.pruned_by,
        reason=cmd.reason,
    )


def flow_from_pb(flow: common_pb2.Flow) -> domain.Flow:
    # lease_token is not on the wire: the engine learns its token from the lease RPCs.
    return domain.Flow(
        flow_id=flow.flow_id,
        namespace=flow.namespace,
        name=flow.name,
        status=_number_to_status(flow.status),
        metadata_json=flow.metadata_json,
        parent_flow_id=flow.parent_flow_id or None,
        fork_version=flow.fork_version,
        version=flow.version,
        generation=flow.generation,
        created_by=flow.created_by,
        created_at=_datetime(flow.created_at),
        updated_at=_datetime(flow.updated_at),
        deleted=flow.deleted,
        wake_at=_datetime(flow.wake_at) if flow.HasField("wake_at") else None,
        task_queue=flow.task_queue or None,
    )


def event_from_pb(event: common_pb2.Event) -> domain.StoredEvent:
    return domain.StoredEvent(
        seq=event.seq,
        flow_id=event.flow_id,
        version=event.version,
        type=event_type_from_pb(event.type),
        payload_json=event.payload_json,
        ts=_datetime(event.ts),
        command_id=event.command_id,
    )


def feed_event_from_pb(item: store_pb2.FeedEvent) -> domain.FeedEvent:
    return domain.FeedEvent(event=event_from_pb(item.event), cursor=item.cursor)


def artifact_from_pb(artifact: common_pb2.Artifact) -> domain.Artifact:
    return domain.Artifact(
        hash=artifact.hash,
        kind=artifact.kind,
        payload_json=artifact.payload_json,
        metadata_json=artifact.metadata_json or None,
        produced_in_seq=artifact.produced_in_seq,
    )


def snapshot_from_pb(snapshot: common_pb2.Snapshot) -> domain.Snapshot:
    return domain.Snapshot(
        flow_id=snapshot.flow_id,
        version=snapshot.version,
        state_json=snapshot.state_json,
        created_at=_datetime(snapshot.created_at),
    )


def append_result(resp: store_pb2.AppendEventsResponse) -> domain.AppendResult:
    return domain.AppendResult(
        resp.first_version, resp.last_version, tuple(resp.seqs), resp.duplicate
    )


def limits_from_pb(resp: store_pb2.GetLimitsResponse) -> Limits:
    """The store's limits. InternalError when they contradict each other or are not positive:
    a store sends what its settings validated, so that would be a contract mismatch."""
    values = {
        "max_payload_bytes": resp.max_payload_bytes,
        "max_message_bytes": resp.max_message_bytes,
        "max_events_per_append": resp.max_events_per_append,
        "max_artifacts_per_append": resp.max_artifacts_per_append,
        "max_events_per_flow": resp.max_events_per_flow,
        "max_id_length": resp.max_id_length,
        "max_json_depth": resp.max_json_depth,
    }
    # As the store's settings allow (STORE_MAX_ARTIFACTS_PER_APPEND may be 0).
    low = [n for n, v in values.items() if v < (0 if n == "max_artifacts_per_append" else 1)]
    if low:
        raise InternalError(f"the store sent limits below their minimum: {', '.join(low)}")
    try:
        return Limits(**values)
    except LimitsError as exc:
        raise InternalError(f"the store sent inconsistent limits: {exc}") from exc
