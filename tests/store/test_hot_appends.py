"""An append that sets no status updates its flow's row in place (a HOT update, migration 0008).

No column an index covers changes (updated_at no longer keys the claim indexes), so Postgres
writes no index entry and leaves no dead version behind for index scans. The counts come from
``pg_stat_xact_user_tables``, read before and after within one transaction: the backend's
pending counts, which it flushes only between transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.rows import TupleRow

from flowledger_core.domain import Append, EventType, FlowStatus
from store_service.adapters.postgres import appendsql
from tests.store.helpers import ev

pytestmark = pytest.mark.postgres_only

RawConn = psycopg.AsyncConnection[TupleRow]
NS = "hot"


@pytest.fixture
async def raw(migrated_database_url: str) -> AsyncIterator[RawConn]:
    conn = await psycopg.AsyncConnection.connect(migrated_database_url)
    yield conn
    await conn.close()


async def flows_updates(conn: RawConn) -> tuple[int, int]:
    """(updates, HOT updates) of flows in this transaction so far."""
    cur = await conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'flows'"
    )
    row = await cur.fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


async def run_batch(conn: RawConn, cmds: list[Append]) -> list[str]:
    cur = await conn.execute(appendsql.APPEND_BATCH, appendsql.batch_params(cmds, 100))
    return [row[0] for row in await cur.fetchall()]


async def new_flows(conn: RawConn, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for fid in ids:
        await conn.execute(
            "INSERT INTO flows (flow_id, namespace, name, status) VALUES (%s, %s, 'f', 'running')",
            (fid, NS),
        )
        await conn.execute(
            "INSERT INTO flow_generations (flow_id, generation, base_version) VALUES (%s, 0, 0)",
            (fid,),
        )
    await conn.commit()
    return ids


async def test_plain_appends_are_hot_updates(raw: RawConn) -> None:
    flows = await new_flows(raw, 4)
    before = await flows_updates(raw)
    for version in range(3):
        batch = [Append(NS, f, version, f"c{version}", (ev(EventType.STEP_STARTED),))
                 for f in flows]  # fmt: skip
        assert await run_batch(raw, batch) == [appendsql.ACCEPTED] * len(flows)
    after = await flows_updates(raw)
    await raw.commit()
    assert (after[0] - before[0], after[1] - before[1]) == (12, 12)


async def status_since(conn: RawConn, flow_id: str) -> object:
    cur = await conn.execute("SELECT status_since FROM flows WHERE flow_id = %s", (flow_id,))
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_only_an_append_that_sets_a_status_moves_status_since(raw: RawConn) -> None:
    (flow,) = await new_flows(raw, 1)
    created = await status_since(raw, flow)
    await raw.commit()
    plain = Append(NS, flow, 0, "c0", (ev(EventType.STEP_STARTED),))
    waiting = Append(NS, flow, 1, "c1", (ev(EventType.STEP_STARTED),),
                     new_status=FlowStatus.WAITING)  # fmt: skip

    counts = [await flows_updates(raw)]
    assert await run_batch(raw, [plain]) == [appendsql.ACCEPTED]
    counts.append(await flows_updates(raw))
    after_plain = await status_since(raw, flow)
    assert await run_batch(raw, [waiting]) == [appendsql.ACCEPTED]
    counts.append(await flows_updates(raw))
    after_wait = await status_since(raw, flow)
    await raw.commit()

    assert after_plain == created
    assert after_wait > created  # type: ignore[operator]
    (u0, h0), (u1, h1), (u2, h2) = counts
    assert (u1 - u0, h1 - h0) == (1, 1)  # the plain append: HOT
    assert (u2 - u1, h2 - h1) == (1, 0)  # status and status_since are indexed: not HOT
