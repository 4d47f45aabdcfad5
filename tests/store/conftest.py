"""The backend fixtures of the store parity suite.

``store`` is parametrized over both backends, so every ``test_parity_*`` case runs once on
:class:`MemoryEventStore` and once on :class:`PostgresEventStore` (a fresh migrated database per
test, from ``tests/fixtures/postgres.py``). Cases that only make sense on Postgres live in
``test_postgres_only.py`` and take ``postgres_store`` directly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore

BACKENDS = ["memory", "postgres"]

# The Postgres store is sized like a small production pool: large enough for the concurrency
# cases (16 writers, a subscriber), small enough that waiting for a connection is exercised.
MIN_CONNECTIONS = 2
MAX_CONNECTIONS = 8


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryEventStore]:
    store = MemoryEventStore()
    yield store
    await store.close()


@pytest.fixture
async def postgres_store(migrated_database_url: str) -> AsyncIterator[EventStore]:
    from store_service.adapters.postgres import PostgresEventStore

    store = await PostgresEventStore.open(
        migrated_database_url,
        min_connections=MIN_CONNECTIONS,
        max_connections=MAX_CONNECTIONS,
        apply_migrations=True,
    )
    yield store
    await store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> EventStore:
    """Each backend in turn, behind the port only."""
    backend: EventStore = request.getfixturevalue(f"{request.param}_store")
    return backend


@pytest.fixture
def ns() -> str:
    """A namespace of this test alone."""
    return f"t-{uuid.uuid4().hex[:12]}"
