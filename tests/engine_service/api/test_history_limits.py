"""Issue 14's history rules end to end: the store service on each backend, an engine replica in
front of it over gRPC, the SDK.

* A flow at its events-per-flow limit can always end: flooded with signals it does not wait for,
  the resuming signal is refused (RESOURCE_EXHAUSTED) and the flow ends FAILED
  (``FlowFailed{EventsPerFlowExceeded}``); CancelFlow ends it CANCELLED. Either way the log holds
  at most the limit plus that ending event.
* An ended flow takes no more events through the store's own port (FAILED_PRECONDITION
  FLOW_ENDED), so DescribeFlow keeps answering; a prune that cuts its ending reopens it and an
  engine runs it to the end again (decision 0022); DeleteBranch refuses a root flow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import grpc.aio
import pytest

from flowledger.canonical import parse_json
from flowledger.client import FlowledgerClient
from flowledger.errors import ResourceExhausted
from flowledger.types import FlowStatus, FlowView
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core.domain import EventType
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.api.conftest import BOUND_S, HELLO_DOCUMENT, Stack, running_engine
from tests.fixtures.store_server import running_store
from tests.store.helpers import read_all
from tests.store_service import helpers as store_helpers

LIMIT = 12
WAITS = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        {"id": "approve", "type": "signal", "config": {"name": "approved"}},
        {"id": "done", "type": "hello.done"},
    ]
}


@pytest.fixture(params=["memory", "postgres"])
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """Each backend, with a limit of LIMIT events per flow."""
    if request.param == "memory":
        memory = MemoryEventStore(max_events_per_flow=LIMIT)
        yield memory
        await memory.close()
        return
    from store_service.adapters.postgres import PostgresEventStore

    postgres = await PostgresEventStore.open(
        request.getfixturevalue("migrated_database_url"), min_connections=1, max_connections=4,
        max_events_per_flow=LIMIT,
    )  # fmt: skip
    yield postgres
    await postgres.close()


@pytest.fixture
async def stack(limited: EventStore) -> AsyncIterator[Stack]:
    async with running_store(limited) as store, running_engine(store.server.address) as engine:
        yield Stack(store, engine, limited)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[FlowledgerClient]:
    async with FlowledgerClient(stack.engine.address, timeout=BOUND_S) as sdk:
        yield sdk


async def start(client: FlowledgerClient, ns: str, document: Mapping[str, Any]) -> str:
    name = f"d-{uuid.uuid4().hex[:8]}"
    created = await client.create_definition(ns, name, document)
    await client.publish_definition(ns, name, created.version.version)
    return (await client.start_flow(ns, name, {})).flow_id


async def until_status(
    client: FlowledgerClient, ns: str, flow_id: str, status: FlowStatus
) -> FlowView:
    """DescribeFlow until the flow has ``status`` (bounded)."""
    async with asyncio.timeout(BOUND_S):
        while True:
            view = await client.describe_flow(ns, flow_id)
            if view.status is status:
                return view
            await asyncio.sleep(0.02)


async def full_and_waiting(client: FlowledgerClient, stack: Stack, ns: str) -> str:
    """A flow WAITING for "approved" whose log was filled to LIMIT by signals it ignores."""
    flow_id = await start(client, ns, WAITS)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)
    version = (await stack.backend.get_flow(ns, flow_id)).version
    assert version < LIMIT
    for i in range(LIMIT - version):
        await client.signal_flow(ns, flow_id, "noise", i)
    flow = await stack.backend.get_flow(ns, flow_id)
    assert (flow.version, flow.status.value) == (LIMIT, "waiting")
    return flow_id


async def test_a_signal_past_the_limit_is_refused_and_the_flow_ends_failed(
    client: FlowledgerClient, stack: Stack, ns: str
) -> None:
    flow_id = await full_and_waiting(client, stack, ns)
    with pytest.raises(ResourceExhausted) as caught:
        await client.signal_flow(ns, flow_id, "approved", "yes")
    assert caught.value.reason == "EVENTS_PER_FLOW_EXCEEDED"
    view = await client.describe_flow(ns, flow_id)  # answered, ended: no waiting forever
    assert view.status is FlowStatus.FAILED
    events = await read_all(stack.backend, ns, flow_id)
    assert len(events) == LIMIT + 1
    assert events[-1].type is EventType.FLOW_FAILED
    assert parse_json(events[-1].payload_json)["error_type"] == "EventsPerFlowExceeded"


async def test_a_cancel_past_the_limit_ends_the_flow_cancelled(
    client: FlowledgerClient, stack: Stack, ns: str
) -> None:
    flow_id = await full_and_waiting(client, stack, ns)
    result = await client.cancel_flow(ns, flow_id, reason="stuck", cancelled_by="ops")
    assert not result.already
    assert (await client.describe_flow(ns, flow_id)).status is FlowStatus.CANCELLED
    events = await read_all(stack.backend, ns, flow_id)
    assert [e.type for e in events[LIMIT:]] == [EventType.FLOW_CANCELLED]
    assert "stuck" in parse_json(events[-1].payload_json)["reason"]
    again = await client.cancel_flow(ns, flow_id)
    assert again.already


async def completed(client: FlowledgerClient, ns: str) -> tuple[str, FlowView]:
    flow_id = await start(client, ns, HELLO_DOCUMENT)
    view = await until_status(client, ns, flow_id, FlowStatus.COMPLETED)
    assert view.flow_fingerprint
    return flow_id, view


async def test_an_ended_flow_takes_no_events_through_the_store_port(
    client: FlowledgerClient, stack: Stack, ns: str
) -> None:
    flow_id, before = await completed(client, ns)
    stub = stack.store.stub
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store_helpers.append(
            stub, ns, flow_id, before.flow.version, store_helpers.ev()
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = store_helpers.failure(caught.value)
    assert (error.reason, error.metadata["status"]) == ("FLOW_ENDED", "completed")
    after = await client.describe_flow(ns, flow_id)
    assert (after.status, after.flow.version) == (FlowStatus.COMPLETED, before.flow.version)
    assert after.flow_fingerprint == before.flow_fingerprint


async def test_a_pruned_completed_flow_is_run_to_its_end_again(
    client: FlowledgerClient, stack: Stack, ns: str
) -> None:
    flow_id, before = await completed(client, ns)
    pruned = await stack.store.stub.PruneFlow(
        store_pb2.PruneFlowRequest(
            namespace=ns, flow_id=flow_id, keep_through_version=3,
            expected_version=before.flow.version, command_id="rewind-1", pruned_by="ops",
        )
    )  # fmt: skip
    assert pruned.flow.status == common_pb2.FLOW_STATUS_RUNNING
    # An engine claims it (it is runnable again) and runs the cut steps once more.
    again = await until_status(client, ns, flow_id, FlowStatus.COMPLETED)
    assert again.flow.generation == 1
    assert again.variants == before.variants
    assert again.flow_fingerprint == before.flow_fingerprint


async def test_delete_branch_refuses_a_root_flow(
    client: FlowledgerClient, stack: Stack, ns: str
) -> None:
    flow_id, _ = await completed(client, ns)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.store.stub.DeleteBranch(
            store_pb2.DeleteBranchRequest(namespace=ns, flow_id=flow_id)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert store_helpers.failure(caught.value).reason == "NOT_A_BRANCH"
    assert not (await client.describe_flow(ns, flow_id)).flow.deleted
