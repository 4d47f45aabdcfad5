"""The flow gauges (``flowledger_flows{status}``, ``flowledger_flows_overdue``,
``flowledger_flows_waiting_due``, ``flowledger_task_queue_depth``) count the flows table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import REGISTRY

from flowledger_core.domain import FlowStatus
from flowledger_core.ports import EventStore
from store_service.adapters.postgres.db import Database
from store_service.adapters.postgres.flow_gauges import refresh
from store_service.adapters.postgres.retry import RetryPolicy
from tests.store.helpers import new_flow

pytestmark = pytest.mark.postgres_only


@pytest.fixture
async def db(migrated_database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(
        migrated_database_url, min_size=1, max_size=2, policy=RetryPolicy(budget_s=5)
    )
    yield database
    await database.close()


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_counts_by_status_and_overdue_runnable_flows(
    postgres_store: EventStore, db: Database, migrated_database_url: str, ns: str
) -> None:
    fresh = await new_flow(postgres_store, ns, "fresh")
    stale = await new_flow(postgres_store, ns, "stale")
    done = await new_flow(postgres_store, ns, "done")
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as conn:
        # Unclaimed for two minutes: overdue. A finished flow is never overdue, however old.
        await conn.execute(
            "UPDATE flows SET updated_at = now() - interval '2 minutes' WHERE flow_id = ANY(%s)",
            ([stale.flow_id, done.flow_id],),
        )
        await conn.execute(
            "UPDATE flows SET status = 'completed' WHERE flow_id = %s", (done.flow_id,)
        )
    assert fresh.flow_id not in (stale.flow_id, done.flow_id)

    await refresh(db, overdue_after_s=60)

    assert gauge("flowledger_flows", status="queued") == 2
    assert gauge("flowledger_flows", status="completed") == 1
    for status in ("running", "waiting", "failed", "cancelled"):
        assert gauge("flowledger_flows", status=status) == 0, status
    assert gauge("flowledger_flows_overdue") == 1
    assert {s.value for s in FlowStatus} == {
        "queued", "running", "waiting", "completed", "failed", "cancelled"
    }


async def test_counts_due_timers_and_task_queue_depths(
    postgres_store: EventStore, db: Database, migrated_database_url: str, ns: str
) -> None:
    other = f"{ns}-b"
    due = [await new_flow(postgres_store, ns, f"due{i}") for i in range(2)]
    later = await new_flow(postgres_store, ns, "later")
    gpu = [await new_flow(postgres_store, ns, f"gpu{i}") for i in range(3)]
    cpu = await new_flow(postgres_store, other, "cpu")
    leased = await new_flow(postgres_store, ns, "leased")
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as conn:
        waiting = "UPDATE flows SET status = 'waiting', wake_at = %s, task_queue = %s "
        await conn.execute(
            waiting + "WHERE flow_id = ANY(%s)",
            (datetime.now(UTC) - timedelta(minutes=1), None, [f.flow_id for f in due]),
        )
        await conn.execute(
            waiting + "WHERE flow_id = %s", (datetime.now(UTC) + timedelta(days=1), None,
                                             later.flow_id)
        )  # fmt: skip
        await conn.execute(waiting + "WHERE flow_id = ANY(%s)",
                           (None, "gpu", [f.flow_id for f in gpu]))  # fmt: skip
        await conn.execute(waiting + "WHERE flow_id = %s", (None, "cpu", cpu.flow_id))
        # Held by a worker (or an engine): neither in a queue's depth nor a backlog.
        await conn.execute(
            waiting + ", lease_expires_at = now() + interval '1 minute' WHERE flow_id = %s",
            (datetime.now(UTC) - timedelta(minutes=1), "gpu", leased.flow_id),
        )

    await refresh(db)

    assert gauge("flowledger_flows_waiting_due") == 2
    assert gauge("flowledger_task_queue_depth", namespace=ns, queue="gpu") == 3
    assert gauge("flowledger_task_queue_depth", namespace=other, queue="cpu") == 1
    assert gauge("flowledger_task_queue_depth", namespace=ns, queue="cpu") is None

    # A drained queue's series goes; the others are recounted.
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as conn:
        await conn.execute(
            "UPDATE flows SET status = 'running', task_queue = NULL, wake_at = NULL "
            "WHERE flow_id = ANY(%s)",
            ([cpu.flow_id, gpu[0].flow_id, due[0].flow_id],),
        )
    await refresh(db)
    assert gauge("flowledger_task_queue_depth", namespace=other, queue="cpu") is None
    assert gauge("flowledger_task_queue_depth", namespace=ns, queue="gpu") == 2
    assert gauge("flowledger_flows_waiting_due") == 1
