"""A flow whose log reaches the store's events-per-flow limit fails, and says why, instead of
being retried forever (the store lets the append that ends a flow pass its limit once)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine_service.core.events import FlowFailed
from engine_service.definitions.samples import chem_flow
from engine_service.run.engine import Engine
from engine_service.steps.registry import StepRegistry
from flowledger_core.domain import FlowStatus
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore

LIMIT = 5  # chem needs 8 events: I S F S F S F C


@pytest.fixture(params=["memory", "postgres"])
async def small_store(
    request: pytest.FixtureRequest, migrated_database_url: str
) -> AsyncIterator[EventStore]:
    store: EventStore
    if request.param == "memory":
        store = MemoryEventStore(max_events_per_flow=LIMIT)
    else:
        from store_service.adapters.postgres import PostgresEventStore

        store = await PostgresEventStore.open(
            migrated_database_url, min_connections=1, max_connections=2,
            apply_migrations=False, max_events_per_flow=LIMIT,
        )  # fmt: skip
    yield store
    await store.close()


async def test_a_flow_past_the_events_limit_fails_with_the_reason(
    small_store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(small_store, registry=registry).run(chem_flow(), {"order": 1}, namespace=ns)
    state = await run.state()
    assert state.failed
    assert state.version <= LIMIT + 1
    last = (await run.events())[-1].event
    assert isinstance(last, FlowFailed)
    assert last.error_type == "EventsPerFlowExceeded"
    assert (await small_store.get_flow(ns, run.flow_id)).status is FlowStatus.FAILED
