"""WatchFlow with WATCH_FILTER_CLOSE_EVENT: one message holding only the event that ended the
flow, whatever path the watch follows it by (the kept log and pushes of the replica that runs
it, the store for a flow run elsewhere), on running and ended flows, completed, failed and
cancelled; ``after_version`` still applies; an unknown filter is INVALID_ARGUMENT. Through the
SDK and the real services over gRPC (both backends), and in-process for the push path, where
the test can see that the watch listens before the flow goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest

from engine_service.api.watch import WatchBatch, watch_flow
from engine_service.definitions.samples import chem_flow, sample_registry
from engine_service.run.engine import Engine
from engine_service.server import EngineServer, serve
from engine_service.store_client.client import GrpcEventStore
from engine_service.work.notifier import FlowNotifier
from flowledger.client import FlowledgerClient
from flowledger.errors import InvalidArgument
from flowledger.rpc_status import from_rpc_error
from flowledger.types import EventType, FlowStatus, WatchUpdate
from flowledger.v1 import engine_pb2, engine_pb2_grpc
from flowledger_core.domain import EventType as StoreEventType
from flowledger_core.domain import FlowStatus as StoreStatus
from flowledger_core.domain import StoredEvent
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import (
    BOUND_S,
    Stack,
    engine_settings,
    published,
    registry_for_tests,
)
from tests.engine_service.helpers import DelegatingStore, normalized
from tests.fixtures.store_client import FAST
from tests.fixtures.store_server import wait_until

FAILING = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        # Its input has no "text": the step fails (BadInput), once, and so does the flow.
        {"id": "split", "type": "chem.split"},
    ]
}
SIGNALLED = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        {"id": "approve", "type": "signal", "config": {"name": "approved"}},
        {"id": "done", "type": "hello.done"},
    ]
}


class Reads(DelegatingStore):
    """The store an engine uses, counting the reads WatchFlow makes, per flow."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        self.calls[flow_id] += 1
        return super().read_events(namespace, flow_id, after_version, to_version, chunk_size)


@contextlib.asynccontextmanager
async def replica(store_addr: str) -> AsyncIterator[tuple[EngineServer, Reads, FlowledgerClient]]:
    """One more engine replica in-process, whose store reads are counted."""
    grpc_store = GrpcEventStore(store_addr, FAST)
    reads = Reads(grpc_store)
    try:
        settings = engine_settings(store_addr)
        server = await serve(settings, store=reads, registry=registry_for_tests())
        try:
            async with FlowledgerClient(server.address, timeout=BOUND_S) as client:
                yield server, reads, client
        finally:
            await server.stop(grace=2.0)
    finally:
        await grpc_store.close()


async def closing(
    client: FlowledgerClient, ns: str, flow_id: str, after_version: int = 0
) -> list[WatchUpdate]:
    async with asyncio.timeout(BOUND_S):
        return [u async for u in client.watch_flow(ns, flow_id, after_version, close_only=True)]


async def whole_log(client: FlowledgerClient, ns: str, flow_id: str) -> list[WatchUpdate]:
    async with asyncio.timeout(BOUND_S):
        return [u async for u in client.watch_flow(ns, flow_id)]


def assert_one_close(
    updates: Sequence[WatchUpdate], kind: EventType, status: FlowStatus, version: int
) -> None:
    assert len(updates) == 1, updates
    (update,) = updates
    assert [(e.type, e.version) for e in update.events] == [(kind, version)]
    assert update.status is status


# -- over gRPC ----------------------------------------------------------------------------------


async def test_a_running_flow_sends_only_its_close_event(
    stack: Stack, client: FlowledgerClient, ns: str, gate_dir: Path
) -> None:
    """Watched on a replica that does not run it (the store path: reads and polls), while the
    flow is held in a step: the watch reads its progress and sends nothing until the end."""
    await published(client, ns, "gated", gate_steps.gated_document("c1"))
    flow_id = (await client.start_flow(ns, "gated")).flow_id
    await wait_until(lambda: bool(gate_steps.entered(gate_dir, "c1")), "the gate", BOUND_S)
    async with replica(stack.store_addr) as (_, reads, other):
        watcher = asyncio.create_task(closing(other, ns, flow_id))
        try:
            # The catch-up read and one poll while the flow is held: it followed a running flow.
            await wait_until(lambda: reads.calls[flow_id] >= 2, "the watch to poll", BOUND_S)
            assert not watcher.done()
            (gate_dir / "c1.open").touch()
            updates = await asyncio.wait_for(watcher, BOUND_S)
        finally:
            watcher.cancel()
    log = await whole_log(client, ns, flow_id)
    last = log[-1].events[-1]
    assert last.type is EventType.FLOW_COMPLETED
    assert_one_close(updates, EventType.FLOW_COMPLETED, FlowStatus.COMPLETED, last.version)
    # The one event is the stored one, not a summary of it.
    sent = updates[0].events[0]
    assert (sent.seq, sent.command_id, sent.payload) == (last.seq, last.command_id, last.payload)


async def test_an_ended_flow_sends_its_close_event_from_either_path(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    """From the replica that ran it (its kept log) and from another (the store); after_version
    before the close event still sends it, at or past it sends nothing."""
    await published(client, ns, "hello")
    flow_id = (await client.start_flow(ns, "hello")).flow_id
    end = await client.wait_for_end(ns, flow_id, within=BOUND_S)
    last = end.events[-1].version
    async with replica(stack.store_addr) as (_, reads, other):
        for watcher in (client, other):
            for after in (0, 3, last - 1):
                updates = await closing(watcher, ns, flow_id, after)
                assert_one_close(updates, EventType.FLOW_COMPLETED, FlowStatus.COMPLETED, last)
            for after in (last, last + 5):
                assert await closing(watcher, ns, flow_id, after) == []
        assert reads.calls[flow_id] >= 1  # the other replica kept nothing: it read the store


async def test_a_failed_flow_sends_its_failure(client: FlowledgerClient, ns: str) -> None:
    await published(client, ns, "failing", FAILING)
    flow_id = (await client.start_flow(ns, "failing")).flow_id
    end = await client.wait_for_end(ns, flow_id, within=BOUND_S)
    log = await whole_log(client, ns, flow_id)
    last = log[-1].events[-1]
    assert last.type is EventType.FLOW_FAILED
    assert_one_close([end], EventType.FLOW_FAILED, FlowStatus.FAILED, last.version)
    assert_one_close(
        await closing(client, ns, flow_id), EventType.FLOW_FAILED, FlowStatus.FAILED, last.version
    )


async def test_a_cancelled_flow_sends_its_cancel(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "approval", SIGNALLED)
    flow_id = (await client.start_flow(ns, "approval")).flow_id

    async def waiting() -> bool:
        return (await stack.backend.get_flow(ns, flow_id)).status is StoreStatus.WAITING

    await wait_until(waiting, "the flow to wait for its signal", BOUND_S)
    watcher = asyncio.create_task(closing(client, ns, flow_id))
    try:
        await client.cancel_flow(ns, flow_id, reason="not needed")
        updates = await asyncio.wait_for(watcher, BOUND_S)
    finally:
        watcher.cancel()
    last = (await whole_log(client, ns, flow_id))[-1].events[-1]
    assert last.type is EventType.FLOW_CANCELLED
    assert_one_close(updates, EventType.FLOW_CANCELLED, FlowStatus.CANCELLED, last.version)


async def test_wait_for_end_waits_for_a_running_flow(
    client: FlowledgerClient, ns: str, gate_dir: Path
) -> None:
    await published(client, ns, "gated", gate_steps.gated_document("c2"))
    flow_id = (await client.start_flow(ns, "gated")).flow_id
    waiter = asyncio.create_task(client.wait_for_end(ns, flow_id, within=BOUND_S))
    try:
        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "c2")), "the gate", BOUND_S)
        assert not waiter.done()
        (gate_dir / "c2.open").touch()
        end = await asyncio.wait_for(waiter, BOUND_S)
    finally:
        waiter.cancel()
    assert end.status is FlowStatus.COMPLETED
    assert [e.type for e in end.events] == [EventType.FLOW_COMPLETED]
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.variants == "ISFSFSFSFC"


async def test_an_unknown_filter_is_invalid(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    flow_id = (await client.start_flow(ns, "hello")).flow_id
    request = engine_pb2.WatchFlowRequest(namespace=ns, flow_id=flow_id, filter=7)  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(stack.engine.address) as channel:
        call = engine_pb2_grpc.EngineServiceStub(channel).WatchFlow(request, timeout=BOUND_S)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    error = from_rpc_error(info.value)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["filter"]


# -- in-process: the kept log and pushes of the replica that runs the flow ------------------------


async def test_a_flow_run_here_is_followed_by_pushes_and_sends_one_batch() -> None:
    memory = MemoryEventStore()
    notifier = FlowNotifier()
    engine = Engine(memory, registry=sample_registry())
    engine.append_observer = notifier.publish
    run = await engine.start(chem_flow(), namespace="c")  # kept: FlowInitialized
    batches: list[WatchBatch] = []

    async def watch() -> None:
        async for batch in watch_flow(memory, notifier, "c", run.flow_id, 0, asyncio.Event(), True):
            batches.append(batch)

    with notifier.producing("c", run.flow_id):
        watcher = asyncio.create_task(watch())
        await wait_until(lambda: notifier.watching("c", run.flow_id) == 1, "the watch", BOUND_S)
        await run.run_to_end()  # each append is pushed to the watch, which follows it
    async with asyncio.timeout(BOUND_S):
        await watcher

    log: list[StoredEvent] = []
    async for chunk in memory.read_events("c", run.flow_id):
        log.extend(chunk)
    assert len(log) > 2
    assert [b.status for b in batches] == [StoreStatus.COMPLETED]
    assert normalized(batches[0].events) == normalized(log[-1:])  # (a pushed ts is the engine's)
    assert log[-1].type is StoreEventType.FLOW_COMPLETED
