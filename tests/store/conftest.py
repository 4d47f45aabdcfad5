"""The backend fixtures of the store parity suite.

``store`` is parametrized over three implementations of the port, so every ``test_parity_*``
case runs once on each:

* ``memory``: :class:`MemoryEventStore`;
* ``postgres``: :class:`PostgresEventStore` (a fresh migrated database per test, from
  ``tests/fixtures/postgres.py``);
* ``grpc``: the engine's store client, :class:`~engine_service.store_client.client.GrpcEventStore`,
  against the store service on loopback (``tests/fixtures/store_server.py``) serving that
  Postgres store. The client is built by the engine's own ``engine_service.server._store_client``
  from a default :class:`~engine_service.settings.ServiceSettings`, so with the production call
  timeout, retry budget, channel options and AppendStream. Only Postgres is served, because that
  is what production runs; the memory store behind gRPC would add time and little coverage.

Where the gRPC client cannot answer as the backends do (a port field the wire does not carry),
the case is marked ``@pytest.mark.not_over_grpc(reason=...)`` and skips the ``grpc`` run with
that reason; every other divergence is fixed in the client
(``engine_service/store_client/port.py``).
A case that needs a particular backend takes its fixture directly (``memory_store``,
``postgres_store``); cases that only make sense on Postgres live in ``test_postgres_only.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from engine_service.server import _store_client
from engine_service.settings import ServiceSettings
from engine_service.store_client.client import GrpcEventStore
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.fixtures.store_server import running_store, store_settings

BACKENDS = ["memory", "postgres", "grpc"]

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


@pytest.fixture
async def grpc_client_store(postgres_store: EventStore) -> AsyncIterator[EventStore]:
    """The engine's store client, connected to the store service serving ``postgres_store``."""
    # No metrics listener: stopping one costs half a second (its serve loop polls at 0.5 s),
    # and the parity cases read no metrics.
    async with running_store(postgres_store, store_settings(metrics_listen="")) as running:
        settings = ServiceSettings(
            store_addr=running.server.address, insecure=True, auth_disabled=True
        )
        client = _store_client(settings)  # the engine's own construction
        assert isinstance(client, GrpcEventStore)
        try:
            yield client
        finally:
            await client.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> EventStore:
    """Each implementation in turn, behind the port only."""
    if request.param == "grpc":
        gap = request.node.get_closest_marker("not_over_grpc")
        if gap is not None:
            pytest.skip(f"not over the gRPC store client: {gap.kwargs['reason']}")
    fixture = "grpc_client_store" if request.param == "grpc" else f"{request.param}_store"
    backend: EventStore = request.getfixturevalue(fixture)
    return backend


@pytest.fixture
def ns() -> str:
    """A namespace of this test alone."""
    return f"t-{uuid.uuid4().hex[:12]}"
