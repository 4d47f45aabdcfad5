"""Waiting flows over real gRPC, on both backends: wake_at, task_queue and task_queues on the
wire (raw stub), through the engine's client (``GrpcEventStore``), and their refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from engine_service.store_client.client import GrpcEventStore
from flowledger.errors import InvalidArgument
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core.domain import Append, ClaimRequest, EventType, FlowStatus, NewFlow
from tests.fixtures.store_server import RunningStore
from tests.store.helpers import ev as domain_ev
from tests.store_service.helpers import append, create_flow, ev, failure, field_paths, ns, read_all

WAITING = common_pb2.FLOW_STATUS_WAITING
RUNNING = common_pb2.FLOW_STATUS_RUNNING
PAST = datetime(2001, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)
FUTURE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)


def ts(moment: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(moment)
    return out


def claim(space: str, *queues: str, owner: str = "w") -> store_pb2.ClaimFlowsRequest:
    return store_pb2.ClaimFlowsRequest(
        owner=owner, limit=10, lease_ms=60_000, namespaces=[space], task_queues=list(queues)
    )


async def test_wait_fields_round_trip_on_the_wire(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    assert not flow.HasField("wake_at")
    assert flow.task_queue == ""
    await append(stub, space, flow.flow_id, 0, new_status=WAITING, wake_at=ts(FUTURE),
                 task_queue="gpu:v1")  # fmt: skip
    got = (await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id))).flow
    assert (got.status, got.wake_at.ToDatetime(tzinfo=UTC), got.task_queue) == (
        WAITING, FUTURE, "gpu:v1",
    )  # fmt: skip
    listed = await stub.ListFlows(store_pb2.ListFlowsRequest(namespace=space))
    assert [(f.wake_at, f.task_queue) for f in listed.flows] == [(got.wake_at, "gpu:v1")]

    assert list((await stub.ClaimFlows(claim(space))).leases) == []  # engines: not due
    leases = (await stub.ClaimFlows(claim(space, "other", "gpu:v1"))).leases
    assert [(x.flow.flow_id, x.flow.task_queue) for x in leases] == [(flow.flow_id, "gpu:v1")]

    # With a status and neither field: both cleared.
    await append(stub, space, flow.flow_id, 1, new_status=RUNNING)
    got = (await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id))).flow
    assert (got.HasField("wake_at"), got.task_queue) == (False, "")


async def test_a_due_timer_is_claimed_by_engines_on_the_wire(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(stub, space, flow.flow_id, 0, new_status=WAITING, wake_at=ts(PAST))
    leases = (await stub.ClaimFlows(claim(space))).leases
    assert [(x.flow.flow_id, x.flow.wake_at.ToDatetime(tzinfo=UTC)) for x in leases] == [
        (flow.flow_id, PAST)
    ]


async def test_the_cancel_request_event_type_on_the_wire(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(stub, space, flow.flow_id, 0, ev(common_pb2.EVENT_TYPE_FLOW_CANCEL_REQUESTED))
    [event] = await read_all(stub, space, flow.flow_id)
    assert event.type == common_pb2.EVENT_TYPE_FLOW_CANCEL_REQUESTED


@pytest.mark.parametrize(
    ("fields", "paths"),
    [
        ({"wake_at": ts(PAST)}, {"wake_at"}),
        ({"task_queue": "q"}, {"task_queue"}),
        ({"task_queue": "q", "wake_at": ts(PAST)}, {"task_queue", "wake_at"}),
        ({"new_status": RUNNING, "task_queue": "q"}, {"task_queue"}),
        ({"new_status": WAITING, "task_queue": "no spaces"}, {"task_queue"}),
        ({"new_status": WAITING, "task_queue": "q" * 129}, {"task_queue"}),
        ({"new_status": WAITING, "wake_at": Timestamp(seconds=253_402_300_800)}, {"wake_at"}),
        ({"new_status": WAITING, "wake_at": Timestamp(seconds=0, nanos=-1)}, {"wake_at"}),
    ],
)
async def test_misplaced_or_malformed_wait_fields_are_refused_with_their_paths(
    store_service: RunningStore, fields: dict[str, object], paths: set[str]
) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, flow.flow_id, 0, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == paths
    assert await read_all(stub, space, flow.flow_id) == []


async def test_malformed_task_queues_of_a_claim_are_refused(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ClaimFlows(claim(space, "ok", "", "not ok"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == {"task_queues[1]", "task_queues[2]"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ClaimFlows(claim(space, *(f"q{i}" for i in range(1001))))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_paths(caught.value) == {"task_queues"}
    assert failure(caught.value).metadata.get("limit") == "max_claim_filter"


async def test_the_engine_client_carries_the_wait_fields(grpc_store: GrpcEventStore) -> None:
    space = ns()
    flow, _ = await grpc_store.create_flow(NewFlow(space, "f"))
    assert (flow.wake_at, flow.task_queue) == (None, None)
    await grpc_store.append(Append(space, flow.flow_id, 0, "c1", (domain_ev(),),
                                   new_status=FlowStatus.WAITING, wake_at=FUTURE,
                                   task_queue="cpu"))  # fmt: skip
    got = await grpc_store.get_flow(space, flow.flow_id)
    assert (got.status, got.wake_at, got.task_queue) == (FlowStatus.WAITING, FUTURE, "cpu")

    assert await grpc_store.claim_flows(ClaimRequest("engine", 10, 60_000, (space,))) == ()
    (lease,) = await grpc_store.claim_flows(
        ClaimRequest("worker", 10, 60_000, (space,), (), ("cpu",))
    )
    assert (lease.flow.flow_id, lease.flow.task_queue, lease.flow.wake_at) == (
        flow.flow_id, "cpu", FUTURE,
    )  # fmt: skip
    await grpc_store.append(Append(space, flow.flow_id, 1, "c2",
                                   (domain_ev(EventType.FLOW_CANCEL_REQUESTED),),
                                   new_status=FlowStatus.WAITING, wake_at=PAST,
                                   fencing_token=lease.fencing_token))  # fmt: skip
    got = await grpc_store.get_flow(space, flow.flow_id)
    assert (got.wake_at, got.task_queue) == (PAST, None)

    with pytest.raises(InvalidArgument) as err:
        await grpc_store.append(
            Append(space, flow.flow_id, 2, "c3", (domain_ev(),), task_queue="cpu")
        )
    assert [v.field for v in err.value.violations] == ["task_queue"]
