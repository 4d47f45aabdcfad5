"""``flowledger_flows{status}`` and ``flowledger_flows_overdue`` count the flows table."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from prometheus_client import REGISTRY

from store_service.adapters.postgres.db import Database
from store_service.adapters.postgres.flow_gauges import refresh
from store_service.adapters.postgres.retry import RetryPolicy
from store_service.domain import FlowStatus
from store_service.ports import EventStore
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
