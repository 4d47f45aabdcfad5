"""The append and create functions reach flows through an index on any table size (0007).

Their statements run with generic plans made once per session. Planned while the flows table
is small (a new database), the lookup of a batch's flows used to be a sequential scan, which
every later append paid on a table that grows a dead row version per append until vacuum runs.
auto_explain reports the plan of each statement the functions run; none may scan flows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from flowledger_core.domain import Append, EventType
from store_service.adapters.postgres import appendsql
from store_service.adapters.postgres.flows import _CREATE_ROOT
from tests.store.helpers import ev

pytestmark = pytest.mark.postgres_only

RawConn = psycopg.AsyncConnection[TupleRow]
NS = "plans"


@pytest.fixture
async def raw(migrated_database_url: str) -> AsyncIterator[RawConn]:
    conn = await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True)
    yield conn
    await conn.close()


async def nested_plans(conn: RawConn, query: str, params: Any) -> list[str]:
    """The plans of the statements ``query`` runs, functions' statements included."""
    try:
        await conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip("this Postgres has no auto_explain module (contrib)")
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_level = notice",
        "client_min_messages = notice",
    ):
        await conn.execute(f"SET {setting}")
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    await (await conn.execute(query, params)).fetchall()
    return plans


def flows_plans(plans: list[str]) -> list[str]:
    return [p for p in plans if " flows " in p or "flows_pkey" in p]


def create_params(flow_id: str, initial: Append | None) -> tuple[Any, ...]:
    return (flow_id, NS, "f", "running", "{}", "", "engine-1", 30_000,
            *appendsql.batch_params([] if initial is None else [initial], 100))  # fmt: skip


async def test_a_batch_looks_its_flows_up_by_key(raw: RawConn) -> None:
    flows = [str(uuid.uuid4()) for _ in range(3)]
    for fid in flows:
        await (await raw.execute(_CREATE_ROOT, create_params(fid, None))).fetchall()
    batch = [Append(NS, fid, 0, "c1", (ev(EventType.FLOW_INITIALIZED),)) for fid in flows]

    plans = await nested_plans(raw, appendsql.APPEND_BATCH, appendsql.batch_params(batch, 100))

    touching = flows_plans(plans)
    assert len(touching) >= 2, plans  # the lock and the head update, at least
    assert not [p for p in touching if "Seq Scan on flows" in p], touching
    assert any("Index Scan using flows_pkey" in p for p in touching), touching


async def test_creating_a_flow_with_its_first_append_looks_flows_up_by_key(raw: RawConn) -> None:
    fid = str(uuid.uuid4())
    first = Append(NS, fid, 0, "c1", (ev(EventType.FLOW_INITIALIZED),), fencing_token=0)

    plans = await nested_plans(raw, _CREATE_ROOT, create_params(fid, first))

    touching = flows_plans(plans)
    assert touching, plans
    assert not [p for p in touching if "Seq Scan on flows" in p], touching
