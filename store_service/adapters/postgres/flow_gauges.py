"""Periodic flow counts for the flow gauges: ``flowledger_flows``, ``flowledger_flows_overdue``,
``flowledger_flows_waiting_due`` and ``flowledger_task_queue_depth``.

Counted by a background task rather than at scrape time because the metrics endpoint cannot
await the database; two grouped counts every ``interval_s`` are cheap next to the append traffic
(the queue count reads the task-queue index only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flowledger_core.domain import FlowStatus
from store_service.adapters.postgres.db import Conn, Database
from store_service.metrics import FLOWS, FLOWS_OVERDUE, FLOWS_WAITING_DUE, TASK_QUEUE_DEPTH

log = logging.getLogger(__name__)

# A runnable flow whose lease ran out (or that was never claimed) this long ago is overdue:
# engines poll every ~0.5 s and leases last ~10 s, so a minute means no replica is taking it up.
OVERDUE_AFTER_S = 60.0

_FREE = "(lease_expires_at IS NULL OR lease_expires_at <= now())"
_COUNT = f"""
SELECT status, count(*),
       count(*) FILTER (WHERE status IN ('queued', 'running')
                        AND coalesce(lease_expires_at, updated_at)
                            < now() - make_interval(secs => %s)),
       count(*) FILTER (WHERE status = 'waiting' AND wake_at <= now() AND {_FREE})
FROM flows WHERE deleted_at IS NULL GROUP BY status
"""
_QUEUES = f"""
SELECT namespace, task_queue, count(*) FROM flows
WHERE status = 'waiting' AND deleted_at IS NULL AND task_queue IS NOT NULL AND {_FREE}
GROUP BY namespace, task_queue
"""

# (status, flows, overdue, waiting due)
_StatusRow = tuple[str, int, int, int]
# The (namespace, queue) series set by the last refresh, so that a drained queue's series goes.
_shown_queues: set[tuple[str, str]] = set()


async def refresh(db: Database, overdue_after_s: float = OVERDUE_AFTER_S) -> None:
    """Count once and set the gauges (every status gets a value, so every series exists)."""

    async def count(conn: Conn) -> tuple[list[_StatusRow], dict[tuple[str, str], int]]:
        cur = await conn.execute(_COUNT, (overdue_after_s,))
        rows = [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall()]
        cur = await conn.execute(_QUEUES)
        queues = {(str(r[0]), str(r[1])): int(r[2]) for r in await cur.fetchall()}
        return rows, queues

    rows, queues = await db.run(count)
    by_status = {status: n for status, n, _, _ in rows}
    for status in FlowStatus:
        FLOWS.labels(status.value).set(by_status.get(status.value, 0))
    FLOWS_OVERDUE.set(sum(overdue for _, _, overdue, _ in rows))
    FLOWS_WAITING_DUE.set(sum(due for _, _, _, due in rows))
    for gone in _shown_queues - queues.keys():
        with contextlib.suppress(KeyError):  # already removed
            TASK_QUEUE_DEPTH.remove(*gone)
    for (namespace, queue), depth in queues.items():
        TASK_QUEUE_DEPTH.labels(namespace, queue).set(depth)
    _shown_queues.clear()
    _shown_queues.update(queues)


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
