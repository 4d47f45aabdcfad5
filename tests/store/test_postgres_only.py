"""Cases only a real Postgres can show: constraints, late commits, lost connections, restarts.

They run the Postgres store against the session's server (``tests/fixtures/postgres.py``) and
reach around it with raw psycopg connections where a test needs to be the "other writer".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.rows import TupleRow

from flowledger.errors import VersionConflict
from flowledger_core.domain import AppendResult
from flowledger_core.ports import EventStore
from tests.fixtures.postgres import PgServer
from tests.fixtures.tcp_proxy import ProxyFactory
from tests.store.conftest import MAX_CONNECTIONS, MIN_CONNECTIONS
from tests.store.helpers import (
    Feed,
    append,
    assert_contiguous,
    ev,
    eventually,
    new_flow,
    read_all,
)

pytestmark = pytest.mark.postgres_only

RawConn = psycopg.AsyncConnection[TupleRow]

_INSERT = """
INSERT INTO event_log (flow_id, generation, version, event_type, payload, command_id)
VALUES (%s, 0, %s, %s, '{"raw": true}', 'raw') RETURNING seq
"""


async def _open_store(url: str) -> EventStore:
    from store_service.adapters.postgres import PostgresEventStore

    store: EventStore = await PostgresEventStore.open(
        url,
        min_connections=MIN_CONNECTIONS,
        max_connections=MAX_CONNECTIONS,
        apply_migrations=True,
    )
    return store


@pytest.fixture
async def raw(migrated_database_url: str) -> AsyncIterator[RawConn]:
    """An autocommit connection of the test's own to the store's database."""
    conn = await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.mark.parametrize("bad", ["STEP_STARTED", "Step_Started", "step-started", "bogus", ""])
async def test_event_type_check_constraint(
    postgres_store: EventStore,
    raw: RawConn,
    ns: str,
    bad: str,
) -> None:
    flow = await new_flow(postgres_store, ns)
    with pytest.raises(psycopg.errors.CheckViolation):
        await raw.execute(_INSERT, (flow.flow_id, 1, bad))
    # The same statement with a valid type goes through: the refusal was the type's.
    async with raw.transaction(force_rollback=True):
        await raw.execute(_INSERT, (flow.flow_id, 1, "step_started"))


async def test_feed_waits_for_a_transaction_that_commits_late(
    postgres_store: EventStore,
    raw: RawConn,
    ns: str,
) -> None:
    held_flow = await new_flow(postgres_store, ns, name="held")
    others = [await new_flow(postgres_store, ns, name=f"o{i}") for i in range(4)]
    feed = Feed(postgres_store.subscribe(ns, chunk_size=3))
    try:
        async with raw.transaction():
            # Takes its seq (and its xid) first, then stays open while others commit after it.
            cur = await raw.execute(_INSERT, (held_flow.flow_id, 1, "step_started"))
            row = await cur.fetchone()
            assert row is not None
            held_seq = int(row[0])
            later: list[int] = []
            for r in range(5):
                for f in others:
                    later.extend((await append(postgres_store, ns, f.flow_id, r, ev(r=r))).seqs)
            # A feed following seq alone would now hand out `later` and pass held_seq for good.
            assert min(later) > held_seq
        sentinel = (await append(postgres_store, ns, others[0].flow_id, 5, ev())).seqs[0]
        got = await feed.wait_for_seq(sentinel)
    finally:
        await feed.close()
    delivered = [f.event.seq for f in got]
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    assert sorted(delivered) == sorted([held_seq, *later, sentinel]), "an event was missed"
    # Commit-safe order: the held transaction began first, so the feed puts its event first.
    assert delivered[0] == held_seq
    # Resuming from the held event's cursor gives exactly the rest.
    tail = Feed(postgres_store.subscribe(ns, after_cursor=got[0].cursor))
    try:
        assert [f.event.seq for f in await tail.wait_for_seq(sentinel)] == delivered[1:]
    finally:
        await tail.close()


async def _writers_survive(
    store: EventStore, ns: str, disrupt: Callable[[], Awaitable[int]], rounds: int = 12
) -> int:
    """Writers append round by round while ``disrupt`` breaks connections before every round.

    Every append must succeed exactly once (a retried commit whose answer was lost comes back
    as a duplicate of itself); returns how many connections ``disrupt`` broke.
    """
    flows = [await new_flow(store, ns, name=f"w{i}") for i in range(6)]
    broken = 0
    results: dict[str, list[AppendResult]] = {f.flow_id: [] for f in flows}

    async def writer(flow_id: str, r: int) -> None:
        res = await append(store, ns, flow_id, r * 2, ev(r=r), ev(r=r), cmd=f"r{r}")
        results[flow_id].append(res)

    for r in range(rounds):
        broken += await disrupt()
        # The disruption also races the appends of this round: half start before it ends.
        await asyncio.wait_for(
            asyncio.gather(disrupt(), *(writer(f.flow_id, r) for f in flows)), 60
        )
    for flow in flows:
        assert [(x.first_version, x.last_version) for x in results[flow.flow_id]] == [
            (2 * r + 1, 2 * r + 2) for r in range(rounds)
        ]
        events = await read_all(store, ns, flow.flow_id)
        assert_contiguous(events)
        assert [e.command_id for e in events] == [f"r{r}" for r in range(rounds) for _ in (0, 1)]
        assert (await store.get_flow(ns, flow.flow_id)).version == 2 * rounds
    return broken


async def test_appends_survive_terminated_backends(
    postgres_store: EventStore, raw: RawConn, ns: str
) -> None:
    async def terminate() -> int:
        cur = await raw.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    retries_before = _retries("connection")
    broken = await _writers_survive(postgres_store, ns, terminate)
    assert broken > 0, "the test never broke a connection"
    assert _retries("connection") > retries_before, "the store never had to retry"


async def test_appends_survive_connection_resets(
    migrated_database_url: str, pg_server: PgServer, tcp_proxy: ProxyFactory, ns: str
) -> None:
    async with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        store = await _open_store(proxy.url_for(migrated_database_url))
        try:

            async def reset() -> int:
                await proxy.reset_all()
                return 1

            accepted_before = proxy.accepted
            await _writers_survive(store, ns, reset)
            assert proxy.accepted > accepted_before, "the store never reconnected"
        finally:
            await store.close()


async def test_appends_survive_a_postgres_restart(
    postgres_store: EventStore, pg_server: PgServer, migrated_database_url: str, ns: str
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("restarting Postgres needs the throwaway server: unset DATABASE_URL")
    started = await _server_start_time(migrated_database_url)
    flows = [await new_flow(postgres_store, ns, name=f"w{i}") for i in range(4)]
    restarted = asyncio.Event()

    async def writer(flow_id: str) -> int:
        version = 0
        # Keep writing until the restart is over, then a few more rounds on the new server.
        after = 0
        while after < 3:
            res = await append(
                postgres_store, ns, flow_id, version, ev(v=version), cmd=f"v{version}"
            )
            assert res.first_version == version + 1
            version = res.last_version
            if restarted.is_set():
                after += 1
        return version

    tasks = [asyncio.create_task(writer(f.flow_id)) for f in flows]
    try:
        # Restart in a thread: the store's retries must run meanwhile on this loop.
        await asyncio.to_thread(pg_server.restart)
        restarted.set()
        versions = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert await _server_start_time(migrated_database_url) > started, "no restart happened"
    for flow, version in zip(flows, versions, strict=True):
        events = await read_all(postgres_store, ns, flow.flow_id)
        assert_contiguous(events)
        assert len(events) == version
        assert [e.command_id for e in events] == [f"v{v}" for v in range(version)]


async def _server_start_time(url: str) -> datetime:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_postmaster_start_time()")
        row = await cur.fetchone()
    assert row is not None
    started: datetime = row[0]
    return started


def _retries(reason: str) -> float:
    return REGISTRY.get_sample_value("flowledger_store_retries_total", {"reason": reason}) or 0.0


def _pool() -> tuple[float, float, float]:
    def g(name: str) -> float:
        value = REGISTRY.get_sample_value(name)
        assert value is not None, f"{name} is not exported"
        return value

    return (
        g("flowledger_db_pool_connections"),
        g("flowledger_db_pool_connections_in_use"),
        g("flowledger_db_pool_requests_waiting"),
    )


async def test_pool_gauges_under_load(postgres_store: EventStore, raw: RawConn, ns: str) -> None:
    flows = [await new_flow(postgres_store, ns, name=f"p{i}") for i in range(24)]
    size, in_use, waiting = _pool()
    assert MIN_CONNECTIONS <= size <= MAX_CONNECTIONS
    assert waiting == 0
    # Appends lock their flow rows: while we hold the table, they pile up holding connections.
    async with raw.transaction():
        await raw.execute("LOCK TABLE flows IN EXCLUSIVE MODE")
        tasks = [asyncio.create_task(append(postgres_store, ns, f.flow_id, 0, ev())) for f in flows]
        try:
            await eventually(lambda: _pool()[1] >= 1)
            size, in_use, waiting = _pool()
            assert 1 <= in_use <= size <= MAX_CONNECTIONS
            assert waiting >= 0
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert all(r.last_version == 1 for r in results)

    await eventually(lambda: _pool()[1] == 0)
    size, in_use, waiting = _pool()
    assert (in_use, waiting) == (0, 0)
    assert MIN_CONNECTIONS <= size <= MAX_CONNECTIONS


async def test_version_conflicts_are_counted(postgres_store: EventStore, ns: str) -> None:
    flow = await new_flow(postgres_store, ns)
    await append(postgres_store, ns, flow.flow_id, 0, ev())
    before = REGISTRY.get_sample_value("flowledger_version_conflicts_total") or 0.0
    with pytest.raises(VersionConflict):
        await append(postgres_store, ns, flow.flow_id, 0, ev())
    assert (REGISTRY.get_sample_value("flowledger_version_conflicts_total") or 0.0) == before + 1


async def test_closed_subscriptions_release_what_they_held(
    postgres_store: EventStore, ns: str
) -> None:
    def subscribers() -> float:
        return REGISTRY.get_sample_value("flowledger_feed_subscribers") or 0.0

    before = subscribers()
    flow = await new_flow(postgres_store, ns)
    feeds = [Feed(postgres_store.subscribe(ns)) for _ in range(5)]
    try:
        await append(postgres_store, ns, flow.flow_id, 0, ev())
        for feed in feeds:
            await feed.wait_for_count(1)
        assert subscribers() == before + 5
    finally:
        for feed in feeds:
            await feed.close()
    assert subscribers() == before
    await eventually(lambda: _pool()[1] == 0)
