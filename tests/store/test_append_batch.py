"""The Postgres append path in detail: one batch through ``flowledger_append_batch`` with every
outcome at once, the dispatcher's behaviour around a stalled batch, and chunked reads.

A batch's composition is only likely when callers race, so the first case hands a batch to one
attempt of the appender directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from flowledger.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    VersionConflict,
)
from flowledger_core.domain import Append, AppendResult, EventType, FlowStatus, NewBranch, Prune
from store_service.adapters.postgres import appender as appender_module
from store_service.adapters.postgres import appendsql
from store_service.adapters.postgres.lineage import Range, plan_chunks
from store_service.adapters.postgres.store import PostgresEventStore
from tests.store.helpers import aclose, append, artifact, ev, eventually, new_flow, read_all

pytestmark = pytest.mark.postgres_only

RawConn = psycopg.AsyncConnection[TupleRow]


@pytest.fixture
async def pg(migrated_database_url: str) -> AsyncIterator[PostgresEventStore]:
    store = await PostgresEventStore.open(
        migrated_database_url, min_connections=2, max_connections=8, retry_budget_s=5
    )
    yield store
    await store.close()


@pytest.fixture
async def raw(migrated_database_url: str) -> AsyncIterator[RawConn]:
    conn = await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True)
    yield conn
    await conn.close()


async def lock_waiters(raw: RawConn) -> int:
    cur = await raw.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def until_lock_waiters(raw: RawConn, within: float = 30.0) -> int:
    """Bounded wait until some backend waits for a lock; returns how many do."""

    async def poll() -> int:
        # Polled: the database signals nothing when a backend starts waiting for a lock.
        while (waiting := await lock_waiters(raw)) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return waiting

    return await asyncio.wait_for(poll(), within)


async def test_one_batch_answers_every_outcome_in_queue_order(
    pg: PostgresEventStore, raw: RawConn, migrated_database_url: str, ns: str
) -> None:
    live, leased, pruned, ended, full = [
        (await new_flow(pg, ns, name=n)).flow_id
        for n in ("live", "leased", "pruned", "ended", "full")
    ]
    gone = (await pg.create_branch(NewBranch(ns, live, 0, "gone")))[0].flow_id
    stored = await append(pg, ns, live, 0, ev(), cmd="stored")
    await pg.delete_branch(ns, gone)
    await append(pg, ns, ended, 0, ev(EventType.FLOW_FAILED), status=FlowStatus.FAILED)
    await append(pg, ns, full, 0, *(ev(n=i) for i in range(5)))
    await raw.execute(
        "UPDATE flows SET lease_token = 7, lease_expires_at = now() + %s WHERE flow_id = %s",
        (timedelta(minutes=1), leased),
    )
    await append(pg, ns, pruned, 0, ev(), ev())
    await pg.prune(Prune(ns, pruned, 1, 2, "cut"))
    shared = artifact({"rows": [1, 2]}, event_index=1)
    cmds = [
        Append(ns, live, 1, "a", (ev(i=1), ev(i=2)), (shared,)),
        Append(ns, live, 1, "b", (ev(),)),  # stale: "a" moved the flow on
        Append(ns, live, 3, "a", (ev(i=1), ev(i=2)), (shared,)),  # "a" again, same batch
        Append(ns, live, 0, "stored", (ev(),)),  # applied by an earlier transaction
        Append("elsewhere", live, 3, "c", (ev(),)),
        Append(ns, gone, 0, "d", (ev(),)),
        Append(ns, leased, 0, "e", (ev(),), fencing_token=6),
        Append(ns, pruned, 1, "cut", (ev(),)),  # the id of a prune
        Append(ns, live, 3, "f", (ev(),), (shared,), new_status=FlowStatus.RUNNING),
        Append(ns, live, 4, "g", (ev(EventType.FLOW_COMPLETED),),
               new_status=FlowStatus.COMPLETED),
        Append(ns, live, 5, "h", (ev(),)),  # "g" ended the flow, in this very batch
        Append(ns, ended, 1, "i", (ev(),)),  # ended before
        Append(ns, full, 5, "j", (ev(),)),  # past the limit of 5
        Append(ns, full, 2**63 - 1, "k", (ev(),)),  # a conflict, whatever it claims
    ]  # fmt: skip
    conn = await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True)
    try:
        rows = await appender_module._attempt(conn, cmds, 5)
    finally:
        await conn.close()
    assert [r[0] for r in rows] == [
        "accepted", "conflict", "same", "duplicate", "not_found", "deleted", "lease_lost",
        "reused", "accepted", "accepted", "ended", "ended", "too_many_events", "conflict",
    ]  # fmt: skip
    out: list[Any] = [appendsql.outcome(c, r, 5) for c, r in zip(cmds, rows, strict=True)]
    a = out[0]
    assert isinstance(a, AppendResult)
    assert (a.first_version, a.last_version, a.duplicate, len(a.seqs)) == (2, 3, False, 2)
    assert isinstance(out[1], VersionConflict)
    assert (out[1].expected_version, out[1].current_version) == (1, 3)
    assert out[2] == AppendResult(2, 3, a.seqs, duplicate=True)
    assert out[3] == AppendResult(1, 1, stored.seqs, duplicate=True)
    assert isinstance(out[4], NotFound)
    assert isinstance(out[5], FailedPrecondition)
    assert out[5].reason == "FLOW_DELETED"
    assert isinstance(out[6], FailedPrecondition)
    assert out[6].reason == "LEASE_LOST"
    assert isinstance(out[7], AlreadyExists)
    assert out[7].reason == "COMMAND_ID_REUSED"
    assert isinstance(out[8], AppendResult)
    assert (out[8].first_version, out[8].last_version) == (4, 4)
    assert isinstance(out[10], FailedPrecondition)
    assert (out[10].reason, out[10].metadata["status"]) == ("FLOW_ENDED", "completed")
    assert isinstance(out[11], FailedPrecondition)
    assert (out[11].reason, out[11].metadata["status"]) == ("FLOW_ENDED", "failed")
    assert isinstance(out[12], ResourceExhausted)
    assert out[12].reason == "EVENTS_PER_FLOW_EXCEEDED"
    assert isinstance(out[13], VersionConflict)
    assert out[13].current_version == 5
    # One artifact row, produced by the first command that offered it.
    assert all(r[6] == 1 for r in rows)
    (found,) = (await pg.get_artifacts(ns, [shared.hash])).found
    assert found.produced_in_seq == a.seqs[1]
    flow = await pg.get_flow(ns, live)
    assert (flow.version, flow.status) == (5, FlowStatus.COMPLETED)
    events = await read_all(pg, ns, live)
    assert [(e.version, e.command_id) for e in events] == [
        (1, "stored"), (2, "a"), (3, "a"), (4, "f"), (5, "g"),
    ]  # fmt: skip
    assert [e.seq for e in events[1:3]] == list(a.seqs)
    for untouched, version in ((gone, 0), (leased, 0), (ended, 1), (full, 5)):
        assert (await pg.get_flow(ns, untouched, include_deleted=True)).version == version


async def test_a_stalled_batch_does_not_hold_up_other_flows(
    pg: PostgresEventStore, raw: RawConn, migrated_database_url: str, ns: str
) -> None:
    blocked, free = [(await new_flow(pg, ns, name=n)).flow_id for n in ("blocked", "free")]
    holder = await psycopg.AsyncConnection.connect(migrated_database_url)
    try:
        await holder.execute("SELECT 1 FROM flows WHERE flow_id = %s FOR UPDATE", (blocked,))
        stuck = asyncio.create_task(append(pg, ns, blocked, 0, ev()))
        assert await until_lock_waiters(raw) == 1
        # The blocked batch waits for the row lock; an append to another flow still commits.
        res = await asyncio.wait_for(append(pg, ns, free, 0, ev()), 30)
        assert (res.first_version, res.duplicate) == (1, False)
        assert not stuck.done()
        await holder.rollback()
        assert (await asyncio.wait_for(stuck, 30)).first_version == 1
    finally:
        await holder.close()


def test_chunks_are_windows_of_exactly_chunk_size_across_ranges() -> None:
    ranges = [Range("a", 0, 1, 5), Range("b", 1, 6, 7)]
    assert list(plan_chunks(ranges, 3)) == [
        [Range("a", 0, 1, 3)],
        [Range("a", 0, 4, 5), Range("b", 1, 6, 6)],
        [Range("b", 1, 7, 7)],
    ]
    assert list(plan_chunks(ranges, 7)) == [ranges]
    assert list(plan_chunks([], 5)) == []


async def test_a_read_closed_early_lets_go_of_its_prefetch(
    pg: PostgresEventStore, ns: str
) -> None:
    flow = await new_flow(pg, ns)
    await append(pg, ns, flow.flow_id, 0, *(ev(i=i) for i in range(10)))
    chunks = pg.read_events(ns, flow.flow_id, chunk_size=3)
    first = await anext(chunks)
    assert [e.version for e in first] == [1, 2, 3]
    await aclose(chunks)  # the next chunk was being fetched meanwhile

    def idle() -> bool:
        stats = pg._db.pool.get_stats()
        return int(stats.get("pool_available", 0)) == int(stats.get("pool_size", 0))

    await eventually(idle)
    tasks = [t for t in asyncio.all_tasks() if "_fetch" in repr(t.get_coro())]
    assert tasks == []
    assert [e.version for e in await read_all(pg, ns, flow.flow_id, chunk=4)] == list(
        range(1, 11)
    )


async def test_a_command_committed_while_a_repeat_waited_for_the_lock_is_a_duplicate(
    pg: PostgresEventStore, raw: RawConn, migrated_database_url: str, ns: str
) -> None:
    """Another store (here: an open transaction) commits command "x"; the repeat of "x", queued
    behind its row lock, must answer its result, not a version conflict."""
    flow = (await new_flow(pg, ns)).flow_id
    cmd = Append(ns, flow, 0, "x", (ev(),))
    first = await psycopg.AsyncConnection.connect(migrated_database_url)  # not autocommit
    try:
        # Holds the flow's lock, uncommitted.
        rows = await appender_module._attempt(first, [cmd], 100)
        assert rows[0][0] == "accepted"
        repeat = asyncio.create_task(append(pg, ns, flow, 0, ev(), cmd="x"))
        assert await until_lock_waiters(raw) == 1
        await first.commit()
        res = await asyncio.wait_for(repeat, 30)
    finally:
        await first.close()
    assert (res.first_version, res.last_version, res.duplicate) == (1, 1, True)
    assert res.seqs == tuple(rows[0][3])
    assert len(await read_all(pg, ns, flow)) == 1
