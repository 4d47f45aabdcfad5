"""Focused cases of the Postgres adapter's own machinery: group commit, the feed's commit-safe
order, retries and the error seam, lineage ranges. The behaviour shared with the memory backend is
the parity suite's (``test_parity_*``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg.rows import TupleRow

from flowledger.errors import (
    Aborted,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    Unavailable,
    VersionConflict,
)
from flowledger_core.domain import Append, FlowFilter, NewBranch, NewEvent, Page, Prune
from store_service.adapters.postgres import appender as appender_module
from store_service.adapters.postgres.lineage import Range, ranges_from_chain
from store_service.adapters.postgres.retry import RetryPolicy, retrying
from store_service.adapters.postgres.sqlerrors import transient_reason
from store_service.adapters.postgres.store import PostgresEventStore
from tests.fixtures.postgres import PgServer
from tests.store.helpers import Feed, aclose, append, artifact, ev, new_flow, read_all

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


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- the global feed ------------------------------------------------------------------------


async def test_feed_delivers_a_held_transaction_exactly_once_amid_concurrent_writers(
    pg: PostgresEventStore, raw: RawConn, ns: str
) -> None:
    held = await new_flow(pg, ns, name="held")
    flows = [await new_flow(pg, ns, name=f"w{i}") for i in range(6)]
    feed = Feed(pg.subscribe(ns, chunk_size=7))
    writing = asyncio.Event()

    async def writer(flow_id: str) -> list[int]:
        seqs: list[int] = []
        for v in range(10):
            seqs.extend((await append(pg, ns, flow_id, v, ev(v=v))).seqs)
            writing.set()
        return seqs

    try:
        async with raw.transaction():
            cur = await raw.execute(
                "INSERT INTO event_log (flow_id, generation, version, event_type, payload, "
                "command_id) VALUES (%s, 0, 1, 'step_started', '{}', 'raw') RETURNING seq",
                (held.flow_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            held_seq = row[0]
            tasks = [asyncio.create_task(writer(f.flow_id)) for f in flows]
            await writing.wait()
            # Writers keep committing around the held transaction, which then commits last.
            written = [s for seqs in await asyncio.gather(*tasks) for s in seqs]
        # A rolled-back transaction notifies nobody: the feed must still move on (fallback poll).
        async with raw.transaction(force_rollback=True):
            await raw.execute("UPDATE flows SET name = name WHERE flow_id = %s", (held.flow_id,))
        last = (await append(pg, ns, flows[0].flow_id, 10, ev())).seqs[0]
        got = await feed.wait_for_seq(last)
    finally:
        await feed.close()
    delivered = [f.event.seq for f in got]
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    assert sorted(delivered) == sorted([held_seq, *written, last]), "an event was missed"
    assert all(s > held_seq for s in written)
    # Cursors resume exactly after their event.
    resumed = Feed(pg.subscribe(ns, after_cursor=got[len(got) // 2].cursor))
    try:
        rest = await resumed.wait_for_seq(last)
    finally:
        await resumed.close()
    assert [f.event.seq for f in rest] == delivered[len(got) // 2 + 1 :]


async def test_feed_validates_its_cursor_and_cleans_up_on_aclose(
    pg: PostgresEventStore, ns: str
) -> None:
    bad = pg.subscribe(ns, after_cursor="v1.not-a-cursor")
    with pytest.raises(InvalidArgument) as info:
        await anext(bad)
    assert info.value.violations[0].field == "after_cursor"

    flow = await new_flow(pg, ns)
    await append(pg, ns, flow.flow_id, 0, ev())
    before = _sample("flowledger_feed_subscribers")
    # The consumer stops at a chunk boundary ...
    it = pg.subscribe(ns)
    assert len(await anext(it)) == 1
    assert _sample("flowledger_feed_subscribers") == before + 1
    await aclose(it)
    assert _sample("flowledger_feed_subscribers") == before
    # ... or is cancelled while waiting in the live tail.
    it = pg.subscribe(ns)
    assert len(await anext(it)) == 1
    waiting = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await aclose(it)
    assert _sample("flowledger_feed_subscribers") == before


# --- group commit ---------------------------------------------------------------------------


async def test_concurrent_appends_at_one_version_have_one_winner(
    pg: PostgresEventStore, ns: str
) -> None:
    flow = await new_flow(pg, ns)
    results = await asyncio.gather(
        *(append(pg, ns, flow.flow_id, 0, ev(i=i)) for i in range(16)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert len(wins) == 1, results
    assert len(conflicts) == 15, results
    assert all(c.current_version == 1 for c in conflicts)
    assert len(await read_all(pg, ns, flow.flow_id)) == 1


async def test_concurrent_appends_share_transactions(pg: PostgresEventStore, ns: str) -> None:
    flows = [await new_flow(pg, ns, name=f"g{i}") for i in range(32)]
    total = "flowledger_group_commit_commands_count"
    singles = "flowledger_group_commit_commands_bucket"
    count0, single0 = _sample(total), _sample(singles, {"le": "1.0"})
    results = await asyncio.gather(*(append(pg, ns, f.flow_id, 0, ev()) for f in flows))
    assert all(r.first_version == 1 for r in results)
    batches = _sample(total) - count0
    multi = batches - (_sample(singles, {"le": "1.0"}) - single0)
    assert multi >= 1, "no transaction carried more than one append command"
    assert batches < len(flows)


async def test_a_poison_command_fails_alone(pg: PostgresEventStore, ns: str) -> None:
    flows = [await new_flow(pg, ns, name=f"p{i}") for i in range(8)]
    bad = Append(ns, flows[3].flow_id, 0, "bad", (NewEvent(ev().type, '{"broken": '),))
    results = await asyncio.gather(
        *(append(pg, ns, f.flow_id, 0, ev()) for i, f in enumerate(flows) if i != 3),
        pg.append(bad),
        return_exceptions=True,
    )
    assert isinstance(results[-1], InvalidArgument)
    assert results[-1].violations[0].field == "events[0].payload_json"
    assert all(not isinstance(r, BaseException) for r in results[:-1]), results
    assert (await pg.get_flow(ns, flows[3].flow_id)).version == 0


async def test_one_command_twice_in_a_batch_is_applied_once(
    pg: PostgresEventStore, ns: str
) -> None:
    flow = await new_flow(pg, ns)
    cmd = Append(ns, flow.flow_id, 0, "same", (ev(), ev()))
    a, b = await asyncio.gather(pg.append(cmd), pg.append(cmd))
    assert sorted([a.duplicate, b.duplicate]) == [False, True]
    assert (a.first_version, a.last_version, a.seqs) == (b.first_version, b.last_version, b.seqs)
    assert len(await read_all(pg, ns, flow.flow_id)) == 2


async def test_a_lost_commit_reply_is_answered_as_a_duplicate(
    pg: PostgresEventStore, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit succeeded but its reply never arrived: the retry must not append again."""
    real = appender_module._attempt
    lost = 0

    async def commit_then_lose_reply(conn: Any, cmds: Any, max_events: int) -> Any:
        nonlocal lost
        done = await real(conn, cmds, max_events)
        if not lost:
            lost += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return done

    flow = await new_flow(pg, ns)
    monkeypatch.setattr(appender_module, "_attempt", commit_then_lose_reply)
    res = await append(pg, ns, flow.flow_id, 0, ev(), ev(), cmd="once")
    assert lost == 1
    assert (res.first_version, res.last_version, res.duplicate) == (1, 2, True)
    assert [e.command_id for e in await read_all(pg, ns, flow.flow_id)] == ["once", "once"]


async def test_artifacts_are_checked_and_deduplicated(pg: PostgresEventStore, ns: str) -> None:
    a, b = await new_flow(pg, ns, name="a"), await new_flow(pg, ns, name="b")
    art = artifact({"rows": [1, 2, 3]})
    forged = type(art)("0" * 64, art.kind, art.payload_json, None, 0)
    with pytest.raises(InvalidArgument) as info:
        await append(pg, ns, a.flow_id, 0, ev(), artifacts=[forged])
    assert info.value.violations[0].field == "artifacts[0].hash"
    inserted0 = _sample("flowledger_artifacts_written_total", {"outcome": "inserted"})
    dedup0 = _sample("flowledger_artifacts_written_total", {"outcome": "deduplicated"})
    r1, r2 = await asyncio.gather(
        append(pg, ns, a.flow_id, 0, ev(), artifacts=[art]),
        append(pg, ns, b.flow_id, 0, ev(), artifacts=[art]),
    )
    found = (await pg.get_artifacts(ns, [art.hash])).found
    assert len(found) == 1
    assert found[0].produced_in_seq in (r1.seqs[0], r2.seqs[0])
    assert _sample("flowledger_artifacts_written_total", {"outcome": "inserted"}) == inserted0 + 1
    assert _sample("flowledger_artifacts_written_total", {"outcome": "deduplicated"}) == dedup0 + 1


async def test_fencing_tokens_and_deleted_flows(
    pg: PostgresEventStore, raw: RawConn, ns: str
) -> None:
    root = await new_flow(pg, ns)
    flow, _ = await pg.create_branch(NewBranch(ns, root.flow_id, 0, "b"))  # deletable
    lease = "UPDATE flows SET lease_token = 7, lease_expires_at = now() + %s WHERE flow_id = %s"
    await raw.execute(lease, (timedelta(minutes=1), flow.flow_id))
    for token in (6, 8):  # an older holder, and a token never handed out
        with pytest.raises(FailedPrecondition) as info:
            await pg.append(Append(ns, flow.flow_id, 0, "c1", (ev(),), fencing_token=token))
        assert info.value.reason == "LEASE_LOST"
    await pg.append(Append(ns, flow.flow_id, 0, "c1", (ev(),), fencing_token=7))
    await raw.execute(lease, (timedelta(minutes=-1), flow.flow_id))  # the lease ran out
    with pytest.raises(FailedPrecondition) as info:
        await pg.append(Append(ns, flow.flow_id, 1, "c2", (ev(),), fencing_token=7))
    assert info.value.reason == "LEASE_LOST"
    await pg.delete_branch(ns, flow.flow_id)
    with pytest.raises(FailedPrecondition) as info:
        await append(pg, ns, flow.flow_id, 1, ev())
    assert info.value.reason == "FLOW_DELETED"


async def test_close_finishes_queued_appends(migrated_database_url: str, ns: str) -> None:
    store = await PostgresEventStore.open(migrated_database_url, max_connections=4)
    flows = [await new_flow(store, ns, name=f"c{i}") for i in range(20)]
    pending = [asyncio.create_task(append(store, ns, f.flow_id, 0, ev())) for f in flows]
    await asyncio.sleep(0)  # queued, not yet committed
    await store.close()
    assert all(t.done() and t.result().first_version == 1 for t in pending)
    with pytest.raises(Unavailable):
        await append(store, ns, flows[0].flow_id, 1, ev())


# --- retries and the error seam -------------------------------------------------------------


async def test_unreachable_database_becomes_unavailable_then_recovers(
    pg_server: PgServer, migrated_database_url: str, ns: str
) -> None:
    store = await PostgresEventStore.open(
        migrated_database_url, min_connections=1, max_connections=2, retry_budget_s=1.5
    )
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_database_url)["dbname"]
    ident = sql.Identifier(str(dbname))
    try:
        flow = await new_flow(store, ns)
        async with await psycopg.AsyncConnection.connect(
            pg_server.admin_url, autocommit=True
        ) as admin:
            await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )
            retries0 = _sample("flowledger_store_retries_total", {"reason": "connection"})
            try:
                with pytest.raises(Unavailable) as info:
                    await append(store, ns, flow.flow_id, 0, ev(), cmd="c1")
                assert info.value.reason == "DATABASE_UNAVAILABLE"
                assert _sample("flowledger_store_retries_total", {"reason": "connection"}) > (
                    retries0
                )
            finally:
                await admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident)
                )
        # Back: like any client, retry Unavailable (the same command id) within a deadline.
        async with asyncio.timeout(30):
            while True:
                try:
                    res = await append(store, ns, flow.flow_id, 0, ev(), cmd="c1")
                    break
                except Unavailable:
                    continue
        assert res.first_version == 1
        assert len(await read_all(store, ns, flow.flow_id)) == 1
    finally:
        await store.close()


async def test_transient_conflicts_past_the_budget_are_aborted() -> None:
    calls = 0

    async def always_conflicting(deadline: float) -> None:
        nonlocal calls
        calls += 1
        raise psycopg.errors.SerializationFailure("could not serialize access")

    before = _sample("flowledger_store_retries_total", {"reason": "serialization"})
    with pytest.raises(Aborted) as info:
        await retrying(RetryPolicy(budget_s=0.3, base_s=0.01, cap_s=0.05), always_conflicting)
    assert info.value.reason == "TRANSIENT_CONFLICT"
    assert calls > 1
    assert _sample("flowledger_store_retries_total", {"reason": "serialization"}) == (
        before + calls - 1
    )


async def test_other_database_errors_are_internal_and_say_nothing_of_the_database(
    raw: RawConn,
) -> None:
    async def broken(deadline: float) -> None:
        await raw.execute("SELECT * FROM secret_internal_table")

    with pytest.raises(InternalError) as info:
        await retrying(RetryPolicy(budget_s=1), broken)
    assert "secret_internal_table" not in info.value.message
    assert "ref " in info.value.message


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (psycopg.errors.SerializationFailure(), "serialization"),
        (psycopg.errors.DeadlockDetected(), "deadlock"),
        (psycopg.errors.AdminShutdown(), "connection"),
        (psycopg.errors.CannotConnectNow(), "connection"),
        (psycopg.OperationalError("the connection is closed"), "connection"),
        (psycopg.errors.UniqueViolation(), None),
        (psycopg.errors.UndefinedTable(), None),
        (ValueError("not a database error"), None),
    ],
)
def test_transient_classification(exc: BaseException, reason: str | None) -> None:
    assert transient_reason(exc) == reason


# --- lineage, snapshots, pagination ---------------------------------------------------------


def test_ranges_walk_branches_and_prunes_oldest_first() -> None:
    # Branch b (head gen 1, version 9) pruned at 6 from its gen 0, which forked parent p@4.
    chain = [("b", 1, 6), ("b", 0, 4), ("p", 2, 2), ("p", 1, 0)]
    assert ranges_from_chain(9, chain) == [
        Range("p", 1, 1, 2),
        Range("p", 2, 3, 4),
        Range("b", 0, 5, 6),
        Range("b", 1, 7, 9),
    ]
    # A prune to below an inherited prefix cuts into the parent's range.
    assert ranges_from_chain(3, [("b", 1, 3), ("b", 0, 4), ("p", 0, 0)]) == [Range("p", 0, 1, 3)]


async def test_branch_of_a_pruned_parent_reads_one_log(pg: PostgresEventStore, ns: str) -> None:
    from flowledger_core.domain import NewBranch

    parent = await new_flow(pg, ns)
    for v in range(6):
        await append(pg, ns, parent.flow_id, v, ev(p=v))
    await pg.save_snapshot(ns, parent.flow_id, 5, '{"at": 5}')
    await pg.prune(Prune(ns, parent.flow_id, 3, 6, "prune-1"))
    assert await pg.load_snapshot(ns, parent.flow_id) is None  # version 5 was cut away
    await append(pg, ns, parent.flow_id, 3, ev(p="new4"), ev(p="new5"))
    branch, _ = await pg.create_branch(NewBranch(ns, parent.flow_id, 4, "b"))
    await append(pg, ns, branch.flow_id, 4, ev(b=5))
    events = await read_all(pg, ns, branch.flow_id, chunk=2)
    assert [e.version for e in events] == [1, 2, 3, 4, 5]
    assert [e.flow_id for e in events] == [parent.flow_id] * 4 + [branch.flow_id]
    assert '"new4"' in events[3].payload_json
    counts = await pg.count_steps(ns, branch.flow_id)
    assert counts.events == 5
    await pg.save_snapshot(ns, parent.flow_id, 3, '{"at": 3}')
    snap = await pg.load_snapshot(ns, parent.flow_id)
    assert snap is not None
    assert snap.version == 3


async def test_list_flows_refuses_a_forged_page_token(pg: PostgresEventStore, ns: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await pg.list_flows(FlowFilter(ns), Page(10, "djEuMTIzLm5vcGU"))
    assert info.value.violations[0].field == "page_token"
