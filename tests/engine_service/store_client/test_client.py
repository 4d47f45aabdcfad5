"""GrpcEventStore against the real store service on loopback: every port method, typed errors.

Every case talks gRPC to the store service in process (``tests/fixtures/store_client.py``) on the
memory backend and on Postgres, and compares with what the backend itself answers.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from engine_service.store_client.client import GrpcEventStore
from flowledger.errors import FieldViolation, InvalidArgument, NotFound, VersionConflict
from flowledger_core.domain import (
    Append,
    EventType,
    FlowFilter,
    FlowStatus,
    NewBranch,
    NewEvent,
    NewFlow,
    Page,
    Prune,
    StepCounts,
)
from flowledger_core.ports import EventStore
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_client import BOUND, FAST, client_handled
from tests.store.helpers import Feed, artifact, ev, read_all

# -- every method round-trips --------------------------------------------------------------------


async def test_flows_round_trip(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    flow, existed = await grpc_store.create_flow(
        NewFlow(ns, "order", metadata_json='{"b": [1, 2], "a": null}', created_by="alice")
    )
    assert not existed
    assert uuid.UUID(flow.flow_id).version == 4  # chosen by the client, before the first attempt
    assert flow == await store_backend.get_flow(ns, flow.flow_id)
    assert flow.created_at.tzinfo is not None
    again, existed = await grpc_store.create_flow(
        NewFlow(
            ns, "order", flow_id=flow.flow_id, metadata_json=flow.metadata_json, created_by="alice"
        )
    )
    assert existed
    assert again == flow
    assert await grpc_store.get_flow(ns, flow.flow_id) == flow

    other, _ = await grpc_store.create_flow(NewFlow(ns, "other", status=FlowStatus.RUNNING))
    first = await grpc_store.list_flows(FlowFilter(ns), Page(size=1))
    assert first == await store_backend.list_flows(FlowFilter(ns), Page(size=1))
    assert first.next_token
    second = await grpc_store.list_flows(FlowFilter(ns), Page(size=1, token=first.next_token))
    assert {f.flow_id for f in first.flows + second.flows} == {flow.flow_id, other.flow_id}
    running = await grpc_store.list_flows(FlowFilter(ns, statuses=(FlowStatus.RUNNING,)), Page())
    assert running.flows == (other,)


async def test_log_round_trips(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await grpc_store.create_flow(NewFlow(ns, "f"))
    out = artifact({"out": 1}, event_index=1)
    cmd = Append(
        ns,
        flow.flow_id,
        0,
        "c-1",
        (ev(EventType.STEP_STARTED), ev(EventType.STEP_FINISHED, out=1)),
        (out,),
        FlowStatus.RUNNING,
    )
    result = await grpc_store.append(cmd)
    assert (result.first_version, result.last_version, result.duplicate) == (1, 2, False)
    assert await grpc_store.append(cmd) == replace(result, duplicate=True)
    assert (await grpc_store.get_flow(ns, flow.flow_id)).status is FlowStatus.RUNNING

    events = await read_all(grpc_store, ns, flow.flow_id)
    assert events == await read_all(store_backend, ns, flow.flow_id)
    assert [e.seq for e in events] == list(result.seqs)
    chunks = [list(c) async for c in grpc_store.read_events(ns, flow.flow_id, chunk_size=1)]
    assert chunks == [[events[0]], [events[1]]]
    assert await read_all(grpc_store, ns, flow.flow_id, after=1, to=2) == events[1:]
    assert await grpc_store.count_steps(ns, flow.flow_id) == StepCounts(2, 1, 0)

    missing = "0" * 64
    lookup = await grpc_store.get_artifacts(ns, [out.hash, missing])
    assert lookup == await store_backend.get_artifacts(ns, [out.hash, missing])
    assert [a.produced_in_seq for a in lookup.found] == [events[1].seq]
    assert lookup.missing == (missing,)

    feed = Feed(grpc_store.subscribe(ns, types=[EventType.STEP_FINISHED]))
    try:
        got = await feed.wait_for_count(1, BOUND)
    finally:
        await feed.close()
    assert [f.event for f in got] == [events[1]]


async def test_branches_prunes_and_snapshots_round_trip(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await grpc_store.create_flow(NewFlow(ns, "f"))
    await grpc_store.append(Append(ns, flow.flow_id, 0, "c-1", (ev(), ev(), ev())))
    events = await read_all(grpc_store, ns, flow.flow_id)

    branch, existed = await grpc_store.create_branch(NewBranch(ns, flow.flow_id, 2, "b"))
    assert not existed
    assert uuid.UUID(branch.flow_id).version == 4
    assert (branch.parent_flow_id, branch.fork_version, branch.version) == (flow.flow_id, 2, 2)
    assert branch == await store_backend.get_flow(ns, branch.flow_id)
    assert await read_all(grpc_store, ns, branch.flow_id) == events[:2]
    deleted = await grpc_store.delete_branch(ns, branch.flow_id, "bob", "done")
    assert deleted.deleted
    assert deleted == await grpc_store.get_flow(ns, branch.flow_id, include_deleted=True)
    with pytest.raises(NotFound):
        await grpc_store.get_flow(ns, branch.flow_id)

    assert await grpc_store.load_snapshot(ns, flow.flow_id) is None
    await grpc_store.save_snapshot(ns, flow.flow_id, 3, '{"s": 3}')
    await grpc_store.save_snapshot(ns, flow.flow_id, 1, '{"s": 1}')
    snapshot = await grpc_store.load_snapshot(ns, flow.flow_id)
    assert snapshot is not None
    assert snapshot == await store_backend.load_snapshot(ns, flow.flow_id)
    assert snapshot.version == 3
    earlier = await grpc_store.load_snapshot(ns, flow.flow_id, max_version=2)
    assert earlier is not None
    assert earlier.version == 1

    pruned, duplicate = await grpc_store.prune(Prune(ns, flow.flow_id, 1, 3, "p-1", "carol"))
    assert not duplicate
    assert (pruned.version, pruned.generation) == (1, 1)
    assert pruned == await store_backend.get_flow(ns, flow.flow_id)
    _, duplicate = await grpc_store.prune(Prune(ns, flow.flow_id, 1, 3, "p-1", "carol"))
    assert duplicate
    assert await read_all(grpc_store, ns, flow.flow_id) == events[:1]


# -- errors arrive typed -------------------------------------------------------------------------


@pytest.mark.parametrize("append_stream", [True, False], ids=["stream", "unary"])
async def test_version_conflict_arrives_typed_and_is_not_retried(
    store_port: int, gated_store: GatedStore, ns: str, append_stream: bool
) -> None:
    client = GrpcEventStore(f"127.0.0.1:{store_port}", FAST, append_stream=append_stream)
    try:
        flow, _ = await client.create_flow(NewFlow(ns, "f"))
        await client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(), ev())))
        before, calls_before = client_handled("AppendEvents", "Aborted"), gated_store.appends
        with pytest.raises(VersionConflict) as info:
            await client.append(Append(ns, flow.flow_id, 1, "c-2", (ev(),)))
    finally:
        await client.close()
    assert (info.value.flow_id, info.value.expected_version, info.value.current_version) == (
        flow.flow_id,
        1,
        2,
    )
    assert gated_store.appends == calls_before + 1  # one attempt, no retry
    # Over the stream, no AppendEvents call at all; else exactly one.
    assert client_handled("AppendEvents", "Aborted") == before + (0 if append_stream else 1)


async def test_invalid_argument_keeps_its_field_violations(
    grpc_store: GrpcEventStore, ns: str
) -> None:
    flow, _ = await grpc_store.create_flow(NewFlow(ns, "f"))
    bad = (NewEvent(EventType.STEP_STARTED, "not json"), NewEvent(EventType.STEP_STARTED, "[1]"))
    with pytest.raises(InvalidArgument) as info:
        await grpc_store.append(Append(ns, flow.flow_id, 0, "c-1", bad))
    assert [v.field for v in info.value.violations] == [
        "events[0].payload_json",
        "events[1].payload_json",
    ]
    assert all(isinstance(v, FieldViolation) and v.description for v in info.value.violations)
    with pytest.raises(InvalidArgument) as info:
        await grpc_store.create_branch(NewBranch(ns, flow.flow_id, 5, "b"))
    assert [v.field for v in info.value.violations] == ["fork_version"]


async def test_not_found_on_calls_and_on_first_iteration(
    grpc_store: GrpcEventStore, ns: str
) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFound):
        await grpc_store.get_flow(ns, unknown)
    with pytest.raises(NotFound):
        await read_all(grpc_store, ns, unknown)


async def test_client_metrics_are_recorded(grpc_store: GrpcEventStore, ns: str) -> None:
    before = client_handled("GetFlow", "NotFound")
    with pytest.raises(NotFound):
        await grpc_store.get_flow(ns, str(uuid.uuid4()))
    assert client_handled("GetFlow", "NotFound") == before + 1
