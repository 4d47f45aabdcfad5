"""Fixtures of the engine core tests: sample registries, and stores of both backends.

``store`` is parametrized over the in-memory and the Postgres backend (a fresh migrated database
per test, from ``tests/fixtures/postgres.py``), so every behavioural case shows the engine giving
the same events and fingerprints on both.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from engine_service.definitions.samples import sample_registry
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.registry import StepRegistry
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore

BACKENDS = ["memory", "postgres"]


@pytest.fixture
def registry() -> StepRegistry:
    return sample_registry()


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryEventStore]:
    store = MemoryEventStore()
    yield store
    await store.close()


@pytest.fixture
async def postgres_store(migrated_database_url: str) -> AsyncIterator[EventStore]:
    from store_service.adapters.postgres import PostgresEventStore

    store: EventStore = await PostgresEventStore.open(
        migrated_database_url, min_connections=1, max_connections=4, apply_migrations=False
    )
    yield store
    await store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> EventStore:
    """Each backend in turn, behind the port only."""
    backend: EventStore = request.getfixturevalue(f"{request.param}_store")
    return backend


@pytest.fixture
def engine(store: EventStore, registry: StepRegistry) -> Engine:
    return Engine(store, registry=registry, settings=EngineSettings(snapshot_every=3))


@pytest.fixture
def ns() -> str:
    """A namespace of this test alone."""
    return f"t-{uuid.uuid4().hex[:12]}"
