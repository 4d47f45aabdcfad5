"""The global feed: every event of a namespace in commit-safe order, catch-up then live.

Why not ``ORDER BY seq``: a BIGSERIAL is drawn at insert time, so a reader that follows ``seq``
can pass a row whose transaction commits later and never see it. Every event row records its
writing transaction (``tx_id``, an xid8). The feed reads in ``(tx_id, seq)`` order and only rows
with ``tx_id`` below the xmin of its own snapshot: every transaction below xmin has finished, so
no row can appear later behind the cursor, and writers are never serialized to achieve it. The
price is that one long-running writer holds the feed back until it ends.

Live tail: one LISTEN connection per store wakes the subscribers on every commit (``pg_notify``
in the append transaction); a short fallback poll covers what a notification cannot announce
(a rolled-back transaction lowering xmin, a lost LISTEN connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg

from flowledger.errors import InvalidArgument
from flowledger_core.domain import EventType, FeedEvent
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.retry import RetryPolicy
from store_service.adapters.postgres.rows import event_from_row
from store_service.metrics import SUBSCRIBERS

log = logging.getLogger(__name__)

CHANNEL = "flowledger_events"
POLL_INTERVAL_S = 0.25

_FEED = """
SELECT e.seq, e.flow_id::text, e.version, e.event_type, e.payload::text, e.ts, e.command_id,
       e.tx_id::text
FROM event_log e JOIN flows f ON f.flow_id = e.flow_id
WHERE f.namespace = %(ns)s
  AND (e.tx_id, e.seq) > (%(tx)s::xid8, %(seq)s)
  AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
  AND (%(types)s::text[] IS NULL OR e.event_type = ANY(%(types)s::text[]))
ORDER BY e.tx_id, e.seq
LIMIT %(limit)s
"""

_CURSOR = re.compile(r"v1\.(\d{1,20})\.(\d{1,19})")


def encode_cursor(tx_id: int, seq: int) -> str:
    return f"v1.{tx_id}.{seq}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    if not cursor:
        return (0, 0)
    m = _CURSOR.fullmatch(cursor)
    if m is None or int(m[1]) >= 2**64 or int(m[2]) >= 2**63:
        raise InvalidArgument.field("after_cursor", "is not a cursor returned by this feed")
    return (int(m[1]), int(m[2]))


class Notifier:
    """Owns the store's LISTEN connection (started with the first subscriber) and its wakers."""

    def __init__(self, conninfo: str, policy: RetryPolicy) -> None:
        self._conninfo = conninfo
        self._policy = policy
        self._wakers: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None

    def register(self) -> asyncio.Event:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="flowledger-feed-listener")
        wake = asyncio.Event()
        self._wakers.add(wake)
        return wake

    def unregister(self, wake: asyncio.Event) -> None:
        self._wakers.discard(wake)

    def _wake_all(self) -> None:
        for wake in self._wakers:
            wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    attempt = 0
                    self._wake_all()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self._wake_all()
            except Exception as exc:  # never let the listener die: it would only wake no one
                # Subscribers keep polling meanwhile; only the wake-ups are late.
                log.warning("feed LISTEN connection lost (%r); reconnecting", exc)
            await asyncio.sleep(self._policy.delay(attempt))
            attempt += 1


async def subscribe(
    db: Database,
    notifier: Notifier,
    namespace: str,
    after_cursor: str,
    types: Sequence[EventType],
    chunk_size: int,
) -> AsyncIterator[Sequence[FeedEvent]]:
    """The feed of ``namespace`` after ``after_cursor``, until the consumer stops iterating."""
    tx, seq = decode_cursor(after_cursor)
    if not 1 <= chunk_size <= 10_000:
        raise InvalidArgument.field("chunk_size", "must be 1..10000")
    params: dict[str, Any] = {
        "ns": namespace,
        "types": [t.value for t in types] or None,
        "limit": chunk_size,
    }

    async def fetch(conn: Conn) -> list[tuple[Any, ...]]:
        cur = await conn.execute(_FEED, params)
        return await cur.fetchall()

    wake = notifier.register()
    SUBSCRIBERS.inc()
    try:
        while True:
            wake.clear()  # before the query: a commit during it wakes the next wait at once
            params["tx"], params["seq"] = str(tx), seq
            rows = await db.run(fetch)
            if rows:
                chunk = [FeedEvent(event_from_row(r), encode_cursor(int(r[7]), r[0])) for r in rows]
                tx, seq = int(rows[-1][7]), rows[-1][0]
                yield chunk
                if len(rows) == chunk_size:
                    continue  # still catching up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL_S):
                    await wake.wait()
    finally:
        notifier.unregister(wake)
        SUBSCRIBERS.dec()
