"""WatchFlow fed by this replica's run (events pushed, not re-read), with the store read as the
fallback; and the brief cache of which definition version a start resolves to. In-process over
the memory store (the push path does not involve gRPC; the service tests cover that)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest

from engine_service.api.watch import WatchBatch, watch_flow
from engine_service.definitions.cache import DefinitionCache
from engine_service.definitions.samples import chem_flow, sample_registry
from engine_service.definitions.stored import document_json
from engine_service.run.engine import Engine
from engine_service.steps.registry import StepRegistry
from engine_service.work.notifier import FlowNotifier
from flowledger.errors import FailedPrecondition
from flowledger_core.domain import DefinitionState, FlowStatus, StoredDefinition, StoredEvent
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.helpers import DelegatingStore, normalized

BOUND_S = 10.0


class ReadCounting(DelegatingStore):
    def __init__(self, inner: MemoryEventStore) -> None:
        super().__init__(inner)
        self.reads = 0

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        self.reads += 1
        return super().read_events(namespace, flow_id, after_version, to_version, chunk_size)


async def stored_events(store: MemoryEventStore, ns: str, flow_id: str) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async for chunk in store.read_events(ns, flow_id):
        out.extend(chunk)
    return out


async def collect(batches: AsyncIterator[WatchBatch], first: asyncio.Event) -> list[WatchBatch]:
    out: list[WatchBatch] = []
    async for batch in batches:
        out.append(batch)
        first.set()
    return out


def delivered(batches: list[WatchBatch]) -> list[StoredEvent]:
    return [e for b in batches for e in b.events]


@pytest.fixture
def memory() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def registry() -> StepRegistry:
    return sample_registry()


async def test_a_flow_run_here_is_watched_from_its_pushes(
    memory: MemoryEventStore, registry: StepRegistry
) -> None:
    store = ReadCounting(memory)
    notifier = FlowNotifier()
    run = await Engine(store, registry=registry).start(chem_flow(), namespace="w")
    first = asyncio.Event()
    with notifier.producing("w", run.flow_id):
        watcher = asyncio.create_task(collect(
            watch_flow(store, notifier, "w", run.flow_id, 0, asyncio.Event()), first
        ))
        async with asyncio.timeout(BOUND_S):
            await first.wait()  # caught up from the store (FlowInitialized)
        reads_after_catch_up = store.reads
        run.on_append = functools.partial(notifier.publish, "w", run.flow_id)
        await run.run_to_end()
    async with asyncio.timeout(BOUND_S):
        batches = await watcher

    events = delivered(batches)
    assert normalized(events) == normalized(await stored_events(memory, "w", run.flow_id))
    assert batches[-1].status is FlowStatus.COMPLETED
    assert store.reads == reads_after_catch_up == 1  # nothing re-read after the catch-up


async def test_a_gap_in_the_pushes_is_read_from_the_store(
    memory: MemoryEventStore, registry: StepRegistry
) -> None:
    store = ReadCounting(memory)
    notifier = FlowNotifier()
    run = await Engine(store, registry=registry).start(chem_flow(), namespace="w")
    appends = 0

    def publish_some(events: tuple[StoredEvent, ...]) -> None:
        nonlocal appends
        appends += 1
        if appends != 2:  # the second append's events never reach the watchers
            notifier.publish("w", run.flow_id, events)

    first = asyncio.Event()
    with notifier.producing("w", run.flow_id):
        watcher = asyncio.create_task(collect(
            watch_flow(store, notifier, "w", run.flow_id, 0, asyncio.Event()), first
        ))
        async with asyncio.timeout(BOUND_S):
            await first.wait()
        run.on_append = publish_some
        await run.run_to_end()
    async with asyncio.timeout(BOUND_S):
        batches = await watcher

    versions = [e.version for e in delivered(batches)]
    stored = await stored_events(memory, "w", run.flow_id)
    assert versions == [e.version for e in stored]  # each once, in order, none missing
    assert normalized(delivered(batches)) == normalized(stored)
    assert batches[-1].status is FlowStatus.COMPLETED
    assert store.reads >= 2


async def test_a_run_that_stops_here_hands_the_watcher_back_to_the_store(
    memory: MemoryEventStore, registry: StepRegistry
) -> None:
    notifier = FlowNotifier()
    engine = Engine(memory, registry=registry)
    run = await engine.start(chem_flow(), namespace="w")
    first = asyncio.Event()
    with notifier.producing("w", run.flow_id):
        watcher = asyncio.create_task(collect(
            watch_flow(memory, notifier, "w", run.flow_id, 0, asyncio.Event()), first
        ))
        async with asyncio.timeout(BOUND_S):
            await first.wait()
        run.on_append = functools.partial(notifier.publish, "w", run.flow_id)
        await run.next()
    # Another replica finishes it: nothing is pushed any more.
    await (await engine.attach(run.flow_id, namespace="w")).run_to_end()
    async with asyncio.timeout(BOUND_S):
        batches = await watcher
    stored = await stored_events(memory, "w", run.flow_id)
    assert [e.version for e in delivered(batches)] == [e.version for e in stored]
    assert batches[-1].status is FlowStatus.COMPLETED


# -- the definition cache ------------------------------------------------------------------------


def version(number: int, state: DefinitionState = DefinitionState.PUBLISHED) -> StoredDefinition:
    definition = chem_flow()
    return StoredDefinition(
        namespace="d", name=definition.name, version=number, state=state,
        definition_json=document_json(definition), definition_hash=definition.definition_hash,
        change_note="", created_by="", created_at=datetime.now(UTC), published_at=None,
    )


class Fetches:
    """What the store would answer for "latest published", counting the questions."""

    def __init__(self, answer: StoredDefinition) -> None:
        self.answer = answer
        self.count = 0

    async def __call__(self) -> StoredDefinition:
        self.count += 1
        return self.answer


async def test_a_published_resolution_is_reused_within_its_ttl() -> None:
    cache = DefinitionCache(ttl=3600)
    fetch = Fetches(version(1))
    first = await cache.startable("d", "chem", 0, fetch)
    second = await cache.startable("d", "chem", 0, fetch)
    assert fetch.count == 1
    assert first[0].version == second[0].version == 1
    assert first[1] is second[1]


async def test_a_transition_here_is_seen_by_the_next_start() -> None:
    cache = DefinitionCache(ttl=3600)
    fetch = Fetches(version(1))
    await cache.startable("d", "chem", 0, fetch)
    fetch.answer = version(2)  # e.g. a rollback made version 2 the latest again
    cache.forget("d", "chem")
    stored, definition = await cache.startable("d", "chem", 0, fetch)
    assert (stored.version, definition.version, fetch.count) == (2, 2, 2)


async def test_a_fetch_overtaken_by_a_transition_is_not_kept() -> None:
    cache = DefinitionCache(ttl=3600)
    fetch = Fetches(version(1))

    async def racing() -> StoredDefinition:
        answer = await fetch()
        cache.forget("d", "chem")  # a transition committed while this answer was in flight
        return answer

    await cache.startable("d", "chem", 0, racing)
    await cache.startable("d", "chem", 0, fetch)
    assert fetch.count == 2


async def test_without_ttl_and_for_unpublished_versions_the_store_is_asked_each_time() -> None:
    cache = DefinitionCache(ttl=0)
    fetch = Fetches(version(1))
    await cache.startable("d", "chem", 1, fetch)
    await cache.startable("d", "chem", 1, fetch)
    assert fetch.count == 2

    cached = DefinitionCache(ttl=3600)
    archived = Fetches(version(1, DefinitionState.ARCHIVED))
    for _ in range(2):
        with pytest.raises(FailedPrecondition) as refused:
            await cached.startable("d", "chem", 1, archived)
        assert refused.value.reason == "DEFINITION_ARCHIVED"
    assert archived.count == 2
