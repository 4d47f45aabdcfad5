"""The one place where protobuf messages and store domain values meet.

Requests are converted only after :mod:`store_service.validation` accepted them, so the functions
here assume well-formed input. Enums map by name (``EVENT_TYPE_STEP_FINISHED`` ↔
``EventType.STEP_FINISHED``), so a value added to one side and not the other fails the mapping
test instead of being silently misnumbered. Contract defaults (``0 means 1000``) live here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from flowledger.v1 import common_pb2, store_pb2
from flowledger_core import domain
from flowledger_core.limits import Limits

# AppendStream's initial metadata: the store reads several commands per message (``more``).
MORE_HEADER = "flowledger-append-more"

# Contract defaults for zero-valued request fields (see store.proto).
DEFAULT_PAGE_SIZE = 100
DEFAULT_READ_CHUNK = 1000
DEFAULT_SUBSCRIBE_CHUNK = 500

EVENT_TYPE_TO_PB: dict[domain.EventType, common_pb2.EventType.ValueType] = {
    t: common_pb2.EventType.Value(f"EVENT_TYPE_{t.name}") for t in domain.EventType
}
EVENT_TYPE_FROM_PB: dict[int, domain.EventType] = {v: k for k, v in EVENT_TYPE_TO_PB.items()}
FLOW_STATUS_TO_PB: dict[domain.FlowStatus, common_pb2.FlowStatus.ValueType] = {
    s: common_pb2.FlowStatus.Value(f"FLOW_STATUS_{s.name}") for s in domain.FlowStatus
}
FLOW_STATUS_FROM_PB: dict[int, domain.FlowStatus] = {v: k for k, v in FLOW_STATUS_TO_PB.items()}


# -- enums and scalars ---------------------------------------------------------------------------


def event_type_from_number(number: int) -> domain.EventType | None:
    """The domain event type of a wire value; None for UNSPECIFIED or an unknown number."""
    return EVENT_TYPE_FROM_PB.get(number)


def flow_status_from_number(number: int) -> domain.FlowStatus | None:
    """The domain flow status of a wire value; None for UNSPECIFIED or an unknown number."""
    return FLOW_STATUS_FROM_PB.get(number)


def event_type_name(number: int) -> str:
    """The wire name of an event type number (for messages); the number if unknown."""
    try:
        return common_pb2.EventType.Name(common_pb2.EventType.ValueType(number))
    except ValueError:
        return str(number)


def _event_type(number: int) -> domain.EventType:
    return EVENT_TYPE_FROM_PB[number]


def _status_or(number: int, default: domain.FlowStatus) -> domain.FlowStatus:
    return FLOW_STATUS_FROM_PB.get(number, default)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def _seconds_nanos(value: datetime) -> tuple[int, int]:
    """What Timestamp.FromDatetime stores (naive means UTC), by exact integer arithmetic and
    several times faster than it."""
    delta = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    seconds, nanos = _seconds_nanos(value)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# -- requests → domain ---------------------------------------------------------------------------


def new_flow(req: store_pb2.CreateFlowRequest) -> domain.NewFlow:
    return domain.NewFlow(
        namespace=req.namespace,
        name=req.name,
        flow_id=req.flow_id or None,
        metadata_json=req.metadata_json or "{}",
        created_by=req.created_by,
        status=_status_or(req.status, domain.FlowStatus.QUEUED),
    )


def flow_query(req: store_pb2.ListFlowsRequest) -> tuple[domain.FlowFilter, domain.Page]:
    flt = domain.FlowFilter(
        namespace=req.namespace,
        statuses=tuple(FLOW_STATUS_FROM_PB[s] for s in req.statuses),
        name=req.name or None,
        parent_flow_id=req.parent_flow_id or None,
        include_deleted=req.include_deleted,
        flow_id_prefix=req.flow_id_prefix,
    )
    return flt, domain.Page(size=req.page_size or DEFAULT_PAGE_SIZE, token=req.page_token)


def append(req: store_pb2.AppendEventsRequest) -> domain.Append:
    return domain.Append(
        namespace=req.namespace,
        flow_id=req.flow_id,
        expected_version=req.expected_version,
        command_id=req.command_id,
        events=tuple(
            domain.NewEvent(type=_event_type(e.type), payload_json=e.payload_json)
            for e in req.events
        ),
        artifacts=tuple(
            domain.NewArtifact(
                hash=a.hash,
                kind=a.kind,
                payload_json=a.payload_json,
                metadata_json=a.metadata_json or None,
                event_index=a.event_index,
            )
            for a in req.artifacts
        ),
        new_status=flow_status_from_number(req.new_status),
        fencing_token=req.fencing_token,
        wake_at=req.wake_at.ToDatetime(tzinfo=UTC) if req.HasField("wake_at") else None,
        task_queue=req.task_queue or None,
    )


def initial_append(req: store_pb2.CreateFlowRequest) -> domain.Append | None:
    """A create call's first append (its namespace and flow id are the new flow's)."""
    return append(req.initial_append) if req.HasField("initial_append") else None


def read_chunk_size(req: store_pb2.ReadEventsRequest) -> int:
    return req.chunk_size or DEFAULT_READ_CHUNK


def subscribe_types(req: store_pb2.SubscribeRequest) -> tuple[domain.EventType, ...]:
    return tuple(_event_type(t) for t in req.types)


def subscribe_chunk_size(req: store_pb2.SubscribeRequest) -> int:
    return req.chunk_size or DEFAULT_SUBSCRIBE_CHUNK


def new_branch(req: store_pb2.CreateBranchRequest) -> domain.NewBranch:
    return domain.NewBranch(
        namespace=req.namespace,
        parent_flow_id=req.parent_flow_id,
        fork_version=req.fork_version,
        name=req.name,
        flow_id=req.flow_id or None,
        metadata_json=req.metadata_json or "{}",
        created_by=req.created_by,
        status=_status_or(req.status, domain.FlowStatus.QUEUED),
    )


def prune(req: store_pb2.PruneFlowRequest) -> domain.Prune:
    return domain.Prune(
        namespace=req.namespace,
        flow_id=req.flow_id,
        keep_through_version=req.keep_through_version,
        expected_version=req.expected_version,
        command_id=req.command_id,
        pruned_by=req.pruned_by,
        reason=req.reason,
    )


# -- domain → responses --------------------------------------------------------------------------


def flow_to_pb(flow: domain.Flow) -> common_pb2.Flow:
    pb = common_pb2.Flow(
        flow_id=flow.flow_id,
        namespace=flow.namespace,
        name=flow.name,
        status=FLOW_STATUS_TO_PB[flow.status],
        metadata_json=flow.metadata_json,
        parent_flow_id=flow.parent_flow_id or "",
        fork_version=flow.fork_version,
        version=flow.version,
        created_by=flow.created_by,
        created_at=_timestamp(flow.created_at),
        updated_at=_timestamp(flow.updated_at),
        deleted=flow.deleted,
        generation=flow.generation,
        task_queue=flow.task_queue or "",
    )
    if flow.wake_at is not None:
        pb.wake_at.CopyFrom(_timestamp(flow.wake_at))
    return pb


def event_to_pb(event: domain.StoredEvent) -> common_pb2.Event:
    return common_pb2.Event(
        seq=event.seq,
        flow_id=event.flow_id,
        version=event.version,
        type=EVENT_TYPE_TO_PB[event.type],
        payload_json=event.payload_json,
        ts=_timestamp(event.ts),
        command_id=event.command_id,
    )


def feed_event_to_pb(item: domain.FeedEvent) -> store_pb2.FeedEvent:
    return store_pb2.FeedEvent(event=event_to_pb(item.event), cursor=item.cursor)


def artifact_to_pb(artifact: domain.Artifact) -> common_pb2.Artifact:
    return common_pb2.Artifact(
        hash=artifact.hash,
        kind=artifact.kind,
        payload_json=artifact.payload_json,
        metadata_json=artifact.metadata_json or "",
        produced_in_seq=artifact.produced_in_seq,
    )


def snapshot_to_pb(snapshot: domain.Snapshot) -> common_pb2.Snapshot:
    return common_pb2.Snapshot(
        flow_id=snapshot.flow_id,
        version=snapshot.version,
        state_json=snapshot.state_json,
        created_at=_timestamp(snapshot.created_at),
    )


def create_flow_response(flow: domain.Flow, existed: bool) -> store_pb2.CreateFlowResponse:
    return store_pb2.CreateFlowResponse(flow=flow_to_pb(flow), existed=existed)


def get_flow_response(flow: domain.Flow) -> store_pb2.GetFlowResponse:
    return store_pb2.GetFlowResponse(flow=flow_to_pb(flow))


def list_flows_response(page: domain.FlowPage) -> store_pb2.ListFlowsResponse:
    return store_pb2.ListFlowsResponse(
        flows=[flow_to_pb(f) for f in page.flows], next_page_token=page.next_token
    )


def append_response(result: domain.AppendResult) -> store_pb2.AppendEventsResponse:
    return store_pb2.AppendEventsResponse(
        first_version=result.first_version,
        last_version=result.last_version,
        seqs=list(result.seqs),
        duplicate=result.duplicate,
    )


def append_stream_result(
    request_id: int, result: domain.AppendResult
) -> store_pb2.AppendStreamResponse:
    # Filled in place: no AppendEventsResponse built and then copied into the oneof.
    response = store_pb2.AppendStreamResponse(request_id=request_id)
    out = response.result
    out.first_version = result.first_version
    out.last_version = result.last_version
    out.seqs.extend(result.seqs)
    out.duplicate = result.duplicate
    return response


def append_stream_error(request_id: int, status: bytes) -> store_pb2.AppendStreamResponse:
    """The answer to a failed command: ``status`` is a serialized google.rpc.Status."""
    return store_pb2.AppendStreamResponse(request_id=request_id, error=status)


def count_steps_response(counts: domain.StepCounts) -> store_pb2.CountStepsResponse:
    return store_pb2.CountStepsResponse(
        events=counts.events,
        steps_finished=counts.steps_finished,
        steps_failed=counts.steps_failed,
    )


def read_events_responses(
    events: Iterable[domain.StoredEvent], max_events: int, max_bytes: int
) -> Iterator[store_pb2.ReadEventsResponse]:
    """``events`` in responses of at most ``max_events`` events and ``max_bytes`` of encoded
    events each (an event larger than that travels alone).

    The events are built in place in their response (no message per event that is then copied)
    and consecutive events of one transaction share one timestamp conversion: reading a long log
    is mostly this loop.
    """
    response = store_pb2.ReadEventsResponse()
    add = response.events.add
    count = size = 0
    last_ts: datetime | None = None
    seconds = nanos = 0
    types = EVENT_TYPE_TO_PB
    for event in events:
        if event.ts != last_ts:
            last_ts = event.ts
            seconds, nanos = _seconds_nanos(last_ts)
        item = add(
            seq=event.seq, flow_id=event.flow_id, version=event.version,
            type=types[event.type], payload_json=event.payload_json, command_id=event.command_id,
        )  # fmt: skip
        item.ts.seconds = seconds
        item.ts.nanos = nanos
        # A repeated message field costs a 1-byte tag, the length varint and the message.
        length = item.ByteSize()
        cost = 1 + max(1, (length.bit_length() + 6) // 7) + length
        if count and (count == max_events or size + cost > max_bytes):
            # The event opens the next response instead: copied there (once per response).
            moved = store_pb2.ReadEventsResponse()
            moved.events.append(item)
            del response.events[-1]
            yield response
            response = moved
            add = response.events.add
            count = size = 0
        count += 1
        size += cost
    if count:
        yield response


def subscribe_response(items: Sequence[store_pb2.FeedEvent]) -> store_pb2.SubscribeResponse:
    return store_pb2.SubscribeResponse(events=items)


def get_artifacts_response(lookup: domain.ArtifactLookup) -> store_pb2.GetArtifactsResponse:
    return store_pb2.GetArtifactsResponse(
        artifacts=[artifact_to_pb(a) for a in lookup.found], missing=list(lookup.missing)
    )


def create_branch_response(flow: domain.Flow, existed: bool) -> store_pb2.CreateBranchResponse:
    return store_pb2.CreateBranchResponse(flow=flow_to_pb(flow), existed=existed)


def delete_branch_response(flow: domain.Flow) -> store_pb2.DeleteBranchResponse:
    return store_pb2.DeleteBranchResponse(flow=flow_to_pb(flow))


def prune_response(flow: domain.Flow, duplicate: bool) -> store_pb2.PruneFlowResponse:
    return store_pb2.PruneFlowResponse(flow=flow_to_pb(flow), duplicate=duplicate)


def load_snapshot_response(snapshot: domain.Snapshot | None) -> store_pb2.LoadSnapshotResponse:
    if snapshot is None:
        return store_pb2.LoadSnapshotResponse(found=False)
    return store_pb2.LoadSnapshotResponse(found=True, snapshot=snapshot_to_pb(snapshot))


def limits_response(limits: Limits) -> store_pb2.GetLimitsResponse:
    return store_pb2.GetLimitsResponse(
        max_payload_bytes=limits.max_payload_bytes,
        max_message_bytes=limits.max_message_bytes,
        max_events_per_append=limits.max_events_per_append,
        max_artifacts_per_append=limits.max_artifacts_per_append,
        max_events_per_flow=limits.max_events_per_flow,
        max_id_length=limits.max_id_length,
        max_json_depth=limits.max_json_depth,
    )
