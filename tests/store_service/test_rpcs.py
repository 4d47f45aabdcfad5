"""Every StoreService RPC's happy path, over real gRPC, on both backends."""

from __future__ import annotations

import json

import grpc
import grpc.aio

from flowledger.canonical import content_hash
from flowledger.v1 import common_pb2, store_pb2, store_pb2_grpc
from flowledger_core.limits import Limits
from flowledger_core.wire.store_client import limits_from_pb
from store_service.grpc_api import StoreServicer
from tests.fixtures.store_server import RunningStore
from tests.store_service.helpers import (
    FAILED,
    FINISHED,
    append,
    art,
    create_flow,
    ev,
    next_feed,
    ns,
    read_all,
)


async def test_create_get_and_list_flows(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    created = await stub.CreateFlow(
        store_pb2.CreateFlowRequest(
            namespace=space, name="first", metadata_json='{"team": "chem", "n": 1}',
            created_by="alice", status=common_pb2.FLOW_STATUS_RUNNING,
        )
    )
    flow = created.flow
    assert not created.existed
    assert flow.namespace == space
    assert flow.name == "first"
    assert flow.created_by == "alice"
    assert flow.status == common_pb2.FLOW_STATUS_RUNNING
    assert json.loads(flow.metadata_json) == {"team": "chem", "n": 1}
    assert flow.version == 0
    assert flow.HasField("created_at")

    again = await stub.CreateFlow(
        store_pb2.CreateFlowRequest(
            namespace=space, flow_id=flow.flow_id, name="first",
            metadata_json='{"n": 1, "team": "chem"}', created_by="alice",
            status=common_pb2.FLOW_STATUS_RUNNING,
        )
    )
    assert again.existed
    assert again.flow.flow_id == flow.flow_id

    got = await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id))
    assert got.flow.flow_id == flow.flow_id
    assert got.flow.name == "first"

    second = await create_flow(stub, space, name="second")
    page1 = await stub.ListFlows(store_pb2.ListFlowsRequest(namespace=space, page_size=1))
    assert [f.flow_id for f in page1.flows] == [second.flow_id]  # newest first
    assert page1.next_page_token
    page2 = await stub.ListFlows(
        store_pb2.ListFlowsRequest(namespace=space, page_size=1, page_token=page1.next_page_token)
    )
    assert [f.flow_id for f in page2.flows] == [flow.flow_id]
    assert not page2.next_page_token
    running = await stub.ListFlows(
        store_pb2.ListFlowsRequest(namespace=space, statuses=[common_pb2.FLOW_STATUS_RUNNING])
    )
    assert [f.flow_id for f in running.flows] == [flow.flow_id]


async def test_append_read_count_and_artifacts(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    output = {"rows": [1, 2, 3], "big": 2**53 - 1}
    first = await append(
        stub, space, flow.flow_id, 0,
        ev(n=1), ev(FINISHED, step="a"), ev(FAILED, step="b"),
        artifacts=[art(output, event_index=1)],
        new_status=common_pb2.FLOW_STATUS_RUNNING,
    )
    assert (first.first_version, first.last_version, first.duplicate) == (1, 3, False)
    assert len(first.seqs) == 3
    assert list(first.seqs) == sorted(first.seqs)

    events = await read_all(stub, space, flow.flow_id)
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.type for e in events] == [common_pb2.EVENT_TYPE_STEP_STARTED, FINISHED, FAILED]
    assert [e.seq for e in events] == list(first.seqs)
    assert json.loads(events[1].payload_json) == {"step": "a"}
    assert all(e.flow_id == flow.flow_id and e.HasField("ts") for e in events)
    assert len({e.command_id for e in events}) == 1

    window = await read_all(stub, space, flow.flow_id, after_version=1, to_version=2)
    assert [e.version for e in window] == [2]

    counts = await stub.CountSteps(
        store_pb2.CountStepsRequest(namespace=space, flow_id=flow.flow_id)
    )
    assert (counts.events, counts.steps_finished, counts.steps_failed) == (3, 1, 1)

    known = content_hash(output)
    unknown = "0" * 64
    found = await stub.GetArtifacts(
        store_pb2.GetArtifactsRequest(namespace=space, hashes=[known, unknown])
    )
    assert [a.hash for a in found.artifacts] == [known]
    assert json.loads(found.artifacts[0].payload_json) == output
    assert found.artifacts[0].produced_in_seq == first.seqs[1]
    assert list(found.missing) == [unknown]

    status = await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id))
    assert status.flow.status == common_pb2.FLOW_STATUS_RUNNING
    assert status.flow.version == 3


async def test_repeated_command_id_returns_the_first_result(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    first = await append(stub, space, flow.flow_id, 0, ev(n=1), ev(n=2), command_id="same")
    repeat = await append(stub, space, flow.flow_id, 0, ev(n=1), ev(n=2), command_id="same")
    assert repeat.duplicate
    assert (repeat.first_version, repeat.last_version) == (first.first_version, first.last_version)
    assert list(repeat.seqs) == list(first.seqs)
    assert len(await read_all(stub, space, flow.flow_id)) == 2


async def test_branch_delete_prune_and_snapshots(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    parent = await create_flow(stub, space)
    await append(stub, space, parent.flow_id, 0, ev(n=1), ev(n=2), ev(n=3))

    branch = await stub.CreateBranch(
        store_pb2.CreateBranchRequest(
            namespace=space, parent_flow_id=parent.flow_id, fork_version=2, name="what-if"
        )
    )
    assert not branch.existed
    assert branch.flow.parent_flow_id == parent.flow_id
    assert branch.flow.fork_version == 2
    await append(stub, space, branch.flow.flow_id, 2, ev(n=30))
    inherited = await read_all(stub, space, branch.flow.flow_id)
    assert [json.loads(e.payload_json)["n"] for e in inherited] == [1, 2, 30]
    assert [e.version for e in inherited] == [1, 2, 3]

    deleted = await stub.DeleteBranch(
        store_pb2.DeleteBranchRequest(
            namespace=space, flow_id=branch.flow.flow_id, deleted_by="bob", reason="done"
        )
    )
    assert deleted.flow.deleted
    still = await stub.GetFlow(
        store_pb2.GetFlowRequest(
            namespace=space, flow_id=branch.flow.flow_id, include_deleted=True
        )
    )
    assert still.flow.deleted

    await stub.SaveSnapshot(
        store_pb2.SaveSnapshotRequest(
            namespace=space, flow_id=parent.flow_id, version=3, state_json='{"cursor": 3}'
        )
    )
    loaded = await stub.LoadSnapshot(
        store_pb2.LoadSnapshotRequest(namespace=space, flow_id=parent.flow_id)
    )
    assert loaded.found
    assert loaded.snapshot.version == 3
    assert json.loads(loaded.snapshot.state_json) == {"cursor": 3}
    below = await stub.LoadSnapshot(
        store_pb2.LoadSnapshotRequest(namespace=space, flow_id=parent.flow_id, max_version=2)
    )
    assert not below.found

    pruned = await stub.PruneFlow(
        store_pb2.PruneFlowRequest(
            namespace=space, flow_id=parent.flow_id, keep_through_version=1, expected_version=3,
            command_id="prune-1", pruned_by="bob", reason="rewind",
        )
    )
    assert not pruned.duplicate
    assert pruned.flow.version == 1
    assert pruned.flow.generation == 1
    assert [e.version for e in await read_all(stub, space, parent.flow_id)] == [1]
    repeat = await stub.PruneFlow(
        store_pb2.PruneFlowRequest(
            namespace=space, flow_id=parent.flow_id, keep_through_version=1, expected_version=3,
            command_id="prune-1",
        )
    )
    assert repeat.duplicate
    gone = await stub.LoadSnapshot(
        store_pb2.LoadSnapshotRequest(namespace=space, flow_id=parent.flow_id)
    )
    assert not gone.found  # the snapshot at version 3 was cut away
    after = await append(stub, space, parent.flow_id, 1, ev(n=99))
    assert after.first_version == 2


async def test_subscribe_catches_up_then_follows_live(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    first = await append(stub, space, flow.flow_id, 0, ev(n=1), ev(n=2), ev(n=3))
    call = stub.Subscribe(store_pb2.SubscribeRequest(namespace=space, chunk_size=2))
    received: list[store_pb2.FeedEvent] = []
    try:
        while len(received) < 3:
            received.extend(await next_feed(call))
        assert [f.event.seq for f in received] == list(first.seqs)
        live = await append(stub, space, flow.flow_id, 3, ev(n=4))
        while len(received) < 4:
            received.extend(await next_feed(call))
        assert [f.event.seq for f in received] == [*first.seqs, *live.seqs]
        assert all(f.cursor for f in received)
    finally:
        call.cancel()

    resumed = stub.Subscribe(
        store_pb2.SubscribeRequest(namespace=space, after_cursor=received[1].cursor)
    )
    try:
        tail: list[store_pb2.FeedEvent] = []
        while len(tail) < 2:
            tail.extend(await next_feed(resumed))
        assert [f.event.seq for f in tail] == [received[2].event.seq, received[3].event.seq]
    finally:
        resumed.cancel()


async def test_get_limits_answers_the_configured_limits() -> None:
    """From the settings, whatever the namespace, and before a backend is attached (a store
    whose database is still starting answers it)."""
    limits = Limits(max_payload_bytes=1000, max_events_per_flow=7, max_id_length=40,
                    max_json_depth=9, max_artifacts_per_append=0)
    servicer = StoreServicer(None, limits)  # no backend (yet)
    server = grpc.aio.server()
    store_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = store_pb2_grpc.StoreServiceStub(channel)
            for space in ("", ns()):
                got = await stub.GetLimits(store_pb2.GetLimitsRequest(namespace=space))
                assert limits_from_pb(got) == limits
                assert got.max_json_depth == 9
    finally:
        await server.stop(0)
