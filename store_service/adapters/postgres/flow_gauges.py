"""Periodic flow counts for the ``flowledger_flows`` and ``flowledger_flows_overdue`` gauges.

Counted by a background task rather than at scrape time because the metrics endpoint cannot
await the database; one grouped count every ``interval_s`` is cheap next to the append traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from store_service.adapters.postgres.db import Conn, Database
from store_service.domain import FlowStatus
from store_service.metrics import FLOWS, FLOWS_OVERDUE

log = logging.getLogger(__name__)

# A runnable flow whose lease ran out (or that was never claimed) this long ago is overdue:
# engines poll every ~0.5 s and leases last ~10 s, so a minute means no replica is taking it up.
OVERDUE_AFTER_S = 60.0

_COUNT = """
SELECT status, count(*),
       count(*) FILTER (WHERE status IN ('queued', 'running')
                        AND coalesce(lease_expires_at, updated_at)
                            < now() - make_interval(secs => %s))
FROM flows WHERE deleted_at IS NULL GROUP BY status
"""


async def refresh(db: Database, overdue_after_s: float = OVERDUE_AFTER_S) -> None:
    """Count once and set the gauges (every status gets a value, so every series exists)."""

    async def count(conn: Conn) -> list[tuple[str, int, int]]:
        cur = await conn.execute(_COUNT, (overdue_after_s,))
        return [(str(r[0]), int(r[1]), int(r[2])) for r in await cur.fetchall()]

    rows = await db.run(count)
    by_status = {status: n for status, n, _ in rows}
    for status in FlowStatus:
        FLOWS.labels(status.value).set(by_status.get(status.value, 0))
    FLOWS_OVERDUE.set(sum(overdue for _, _, overdue in rows))


class FlowGauges:
    """Keeps the gauges fresh until :meth:`close`."""

    def __init__(self, db: Database, interval_s: float = 15.0) -> None:
        self._task = asyncio.create_task(self._loop(db, interval_s), name="flow-gauges")

    async def _loop(self, db: Database, interval_s: float) -> None:
        while True:
            try:
                await refresh(db)
            except Exception:  # a metrics refresh must never take the store down
                log.warning("counting flows for metrics failed", exc_info=True)
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
