"""WatchFlow of a flow this replica created, served from what the replica appended (no GetFlow,
no ReadEvents), and the store path for everything else: a flow created elsewhere, a kept log
dropped at a gap, another namespace. Both backends, the real store service over gRPC; store
calls are counted by a wrapper around the store client each engine uses. The bounds of the kept
logs are unit-tested on :class:`FlowNotifier` at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine_service.api.watch import WatchBatch, watch_flow
from engine_service.definitions.samples import chem_flow, sample_registry
from engine_service.run.engine import Engine
from engine_service.server import EngineServer, serve
from engine_service.store_client.client import GrpcEventStore
from engine_service.work.local_logs import EVENT_OVERHEAD_BYTES, LocalLogLimits
from engine_service.work.notifier import FlowNotifier
from flowledger.canonical import parse_json
from flowledger.client import FlowledgerClient
from flowledger.errors import NotFound
from flowledger.types import Event, WatchUpdate
from flowledger.types import FlowStatus as SdkStatus
from flowledger_core.domain import EventType, Flow, FlowStatus, StoredEvent
from flowledger_core.ports import EventStore
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import (
    BOUND_S,
    engine_settings,
    published,
    registry_for_tests,
)
from tests.engine_service.helpers import DelegatingStore
from tests.fixtures.store_client import FAST
from tests.fixtures.store_server import RunningStore, running_store, wait_until


class Counting(DelegatingStore):
    """The store an engine uses, counting the reads WatchFlow may make, per flow."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.calls: Counter[tuple[str, str]] = Counter()

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        self.calls["get_flow", flow_id] += 1
        return await super().get_flow(namespace, flow_id, include_deleted)

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        self.calls["read_events", flow_id] += 1
        return super().read_events(namespace, flow_id, after_version, to_version, chunk_size)

    def reads(self, flow_id: str) -> int:
        return self.calls["get_flow", flow_id] + self.calls["read_events", flow_id]


@dataclass
class Replica:
    server: EngineServer
    store: Counting
    client: FlowledgerClient


@contextlib.asynccontextmanager
async def replica(store_addr: str) -> AsyncIterator[Replica]:
    """An engine replica in-process whose store client is counted."""
    grpc_store = GrpcEventStore(store_addr, FAST)
    counting = Counting(grpc_store)
    try:
        server = await serve(
            engine_settings(store_addr), store=counting, registry=registry_for_tests()
        )
        try:
            async with FlowledgerClient(server.address, timeout=BOUND_S) as client:
                yield Replica(server, counting, client)
        finally:
            await server.stop(grace=2.0)
    finally:
        await grpc_store.close()


@pytest.fixture
async def store(store_backend: EventStore) -> AsyncIterator[RunningStore]:
    async with running_store(store_backend) as running:
        yield running


async def stored_log(backend: EventStore, ns: str, flow_id: str) -> list[StoredEvent]:
    """The flow's log read from the backend itself (not through any engine's store client)."""
    out: list[StoredEvent] = []
    async for chunk in backend.read_events(ns, flow_id):
        out.extend(chunk)
    return out


async def until_ended(backend: EventStore, ns: str, flow_id: str) -> None:
    async def ended() -> bool:
        return (await backend.get_flow(ns, flow_id)).status.terminal

    await wait_until(ended, f"flow {flow_id} to end", BOUND_S)


async def watched(
    client: FlowledgerClient, ns: str, flow_id: str, after_version: int = 0
) -> list[WatchUpdate]:
    async with asyncio.timeout(BOUND_S):
        return [u async for u in client.watch_flow(ns, flow_id, after_version)]


def same(delivered: Sequence[Event | StoredEvent], stored: Sequence[StoredEvent]) -> bool:
    """Equal but for ``ts`` (a pushed event carries the engine's clock) and the payload's text
    (Postgres renders its jsonb its own way): the same JSON value."""

    def key(e: Event | StoredEvent) -> tuple[Any, ...]:
        return (e.seq, e.flow_id, e.version, e.type.value, parse_json(e.payload_json),
                e.command_id)  # fmt: skip

    return [key(e) for e in delivered] == [key(e) for e in stored]


def events_of(updates: Sequence[WatchUpdate]) -> list[Event]:
    return [e for u in updates for e in u.events]


SIGNALLED = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        {"id": "approve", "type": "signal", "config": {"name": "approved"}},
        {"id": "done", "type": "hello.done"},
    ]
}


# -- served from the kept log --------------------------------------------------------------------


async def test_a_flow_started_here_is_watched_without_reading_the_store(
    store_backend: EventStore, store: RunningStore, ns: str
) -> None:
    async with replica(store.server.address) as here:
        await published(here.client, ns, "hello")
        flow_id = (await here.client.start_flow(ns, "hello")).flow_id
        await until_ended(store_backend, ns, flow_id)
        before = here.store.reads(flow_id)

        whole = await watched(here.client, ns, flow_id)
        tail = await watched(here.client, ns, flow_id, after_version=3)
        past_the_end = await watched(here.client, ns, flow_id, after_version=len(whole[0].events))

        assert here.store.reads(flow_id) == before  # no GetFlow, no ReadEvents
    log = await stored_log(store_backend, ns, flow_id)
    assert log[-1].type is EventType.FLOW_COMPLETED
    assert same(events_of(whole), log)
    assert same(events_of(tail), log[3:])
    assert whole[-1].status is tail[-1].status is SdkStatus.COMPLETED
    assert past_the_end == []


async def test_a_running_flow_is_caught_up_from_the_kept_log_then_pushed(
    store_backend: EventStore, store: RunningStore, ns: str, gate_dir: Path
) -> None:
    async with replica(store.server.address) as here:
        await published(here.client, ns, "gated", gate_steps.gated_document("w1"))
        flow_id = (await here.client.start_flow(ns, "gated")).flow_id
        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "w1")), "the gate", BOUND_S)
        before = Counter(here.store.calls)

        first = asyncio.Event()
        updates: list[WatchUpdate] = []

        async def watch() -> None:
            async for update in here.client.watch_flow(ns, flow_id):
                updates.append(update)
                first.set()

        watcher = asyncio.create_task(watch())
        async with asyncio.timeout(BOUND_S):
            await first.wait()
        caught_up = here.store.reads(flow_id) - (
            before["get_flow", flow_id] + before["read_events", flow_id]
        )
        (gate_dir / "w1.open").touch()
        async with asyncio.timeout(BOUND_S):
            await watcher
        gets = here.store.calls["get_flow", flow_id] - before["get_flow", flow_id]

    assert caught_up == 0
    assert gets == 0  # (ReadEvents may run as the 1 s safety poll on a slow machine)
    assert updates[0].status is SdkStatus.RUNNING
    assert updates[-1].status is SdkStatus.COMPLETED
    assert same(events_of(updates), await stored_log(store_backend, ns, flow_id))


async def test_a_signal_sent_here_keeps_the_log_whole(
    store_backend: EventStore, store: RunningStore, ns: str
) -> None:
    async with replica(store.server.address) as here:
        await published(here.client, ns, "approval", SIGNALLED)
        flow_id = (await here.client.start_flow(ns, "approval")).flow_id

        async def waiting() -> bool:
            return (await store_backend.get_flow(ns, flow_id)).status is FlowStatus.WAITING

        await wait_until(waiting, "the flow to wait for its signal", BOUND_S)
        await here.client.signal_flow(ns, flow_id, "approved", {"message": "ok by ana"})
        await until_ended(store_backend, ns, flow_id)
        before = here.store.reads(flow_id)
        updates = await watched(here.client, ns, flow_id)
        assert here.store.reads(flow_id) == before
    log = await stored_log(store_backend, ns, flow_id)
    assert EventType.SIGNAL_RECEIVED in {e.type for e in log}
    assert same(events_of(updates), log)
    assert updates[-1].status is SdkStatus.COMPLETED


# -- the store path ------------------------------------------------------------------------------


async def test_a_flow_started_on_another_replica_is_watched_from_the_store(
    store_backend: EventStore, store: RunningStore, ns: str
) -> None:
    async with replica(store.server.address) as a, replica(store.server.address) as b:
        await published(a.client, ns, "hello")
        flow_id = (await a.client.start_flow(ns, "hello")).flow_id
        updates = await watched(b.client, ns, flow_id)
        assert b.store.calls["get_flow", flow_id] >= 1  # B kept nothing: it asked the store
    assert same(events_of(updates), await stored_log(store_backend, ns, flow_id))
    assert updates[-1].status is SdkStatus.COMPLETED


async def test_another_namespace_is_not_found(store: RunningStore, ns: str) -> None:
    async with replica(store.server.address) as here:
        await published(here.client, ns, "hello")
        flow_id = (await here.client.start_flow(ns, "hello")).flow_id
        await watched(here.client, ns, flow_id)
        before = here.store.calls["get_flow", flow_id]
        with pytest.raises(NotFound):
            await watched(here.client, f"{ns}-other", flow_id)
        assert here.store.calls["get_flow", flow_id] == before + 1  # the store said so


async def test_a_gap_drops_the_kept_log_and_the_watch_reads_the_store(
    store_backend: EventStore, store: RunningStore, ns: str
) -> None:
    grpc_store = GrpcEventStore(store.server.address, FAST)
    try:
        counting = Counting(grpc_store)
        notifier = FlowNotifier()
        here = Engine(counting, registry=sample_registry())
        here.append_observer = notifier.publish
        elsewhere = Engine(counting, registry=sample_registry())  # not published here
        run = await here.start(chem_flow(), namespace=ns)
        assert notifier.local_log(ns, run.flow_id) is not None
        await (await elsewhere.attach(run.flow_id, namespace=ns)).next()
        await run.run_to_end()  # conflicts, re-reads, appends after what it never saw
        assert notifier.local_log(ns, run.flow_id) is None

        before = Counter(counting.calls)
        async with asyncio.timeout(BOUND_S):
            batches: list[WatchBatch] = [
                b async for b in watch_flow(counting, notifier, ns, run.flow_id, 0, asyncio.Event())
            ]
        assert counting.calls["get_flow", run.flow_id] == before["get_flow", run.flow_id] + 1
        assert counting.calls["read_events", run.flow_id] > before["read_events", run.flow_id]
    finally:
        await grpc_store.close()
    assert same(
        [e for b in batches for e in b.events], await stored_log(store_backend, ns, run.flow_id)
    )
    assert batches[-1].status is FlowStatus.COMPLETED


# -- the kept logs' bounds (FlowNotifier alone) --------------------------------------------------


def event(version: int, kind: EventType = EventType.STEP_STARTED, flow: str = "f") -> StoredEvent:
    return StoredEvent(version, flow, version, kind, "{}", datetime.now(UTC), f"c{version}")


def versions(notifier: FlowNotifier, ns: str, flow: str) -> list[int] | None:
    kept = notifier.local_log(ns, flow)
    return None if kept is None else [e.version for e in kept]


def test_a_log_starts_at_version_1_and_grows_only_without_a_gap() -> None:
    notifier = FlowNotifier()
    notifier.publish("n", "f", (event(2),))
    assert versions(notifier, "n", "f") is None  # never started in the middle
    notifier.publish("n", "f", (event(1, EventType.FLOW_INITIALIZED), event(2)))
    notifier.publish("n", "f", (event(3),))
    assert versions(notifier, "n", "f") == [1, 2, 3]
    assert versions(notifier, "other", "f") is None
    notifier.publish("n", "f", (event(5),))  # 4 was appended by someone else
    assert versions(notifier, "n", "f") is None
    notifier.publish("n", "f", (event(6),))
    assert versions(notifier, "n", "f") is None
    notifier.publish("n", "f", (event(1, EventType.FLOW_INITIALIZED),))
    notifier.publish("n", "f", (event(2),))
    notifier.publish("n", "f", (event(2),))  # at or below the last: not a continuation
    assert versions(notifier, "n", "f") is None


def test_the_least_recently_used_log_is_evicted_past_the_flow_bound() -> None:
    notifier = FlowNotifier(LocalLogLimits(flows=2))
    for flow in ("a", "b"):
        notifier.publish("n", flow, (event(1, flow=flow),))
    assert versions(notifier, "n", "a") == [1]  # read: now the most recent
    notifier.publish("n", "c", (event(1, flow="c"),))
    assert versions(notifier, "n", "b") is None
    assert versions(notifier, "n", "a") == versions(notifier, "n", "c") == [1]


def test_the_byte_bound_evicts_and_a_long_log_is_dropped() -> None:
    one = len("{}") + len("c1") + EVENT_OVERHEAD_BYTES
    notifier = FlowNotifier(LocalLogLimits(events_per_flow=3, bytes=3 * one))
    notifier.publish("n", "a", (event(1, flow="a"), event(2, flow="a")))
    notifier.publish("n", "b", (event(1, flow="b"), event(2, flow="b")))
    assert versions(notifier, "n", "a") is None  # 4 events' worth: the older log went
    assert versions(notifier, "n", "b") == [1, 2]
    notifier.publish("n", "b", (event(3, flow="b"), event(4, flow="b")))
    assert versions(notifier, "n", "b") is None  # longer than 3 events
    notifier.publish("n", "c", (event(1, flow="c"),))
    assert versions(notifier, "n", "c") == [1]  # the budget was given back


def test_no_log_is_kept_with_a_zero_flow_bound() -> None:
    notifier = FlowNotifier(LocalLogLimits(flows=0))
    notifier.publish("n", "f", (event(1),))
    assert notifier.local_log("n", "f") is None
