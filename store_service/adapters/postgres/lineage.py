"""Which stored rows make up a flow's log: branch and prune generations resolved to ranges.

A flow's log is never copied. Generation ``g`` of flow ``f`` holds the versions above its
``base_version``; the versions at or below come from ``(inherit_flow_id, inherit_generation)``:
the parent (a branch's generation 0) or the previous generation (after a prune). Resolving walks
that chain once and yields ranges ``(flow_id, generation, lo..hi)``, oldest first. Every range
lies at or below the flow's head version, which only ever grows within a generation, and versions
are gapless within a range, so reading it in windows of versions (one query per chunk, the next
fetched while the consumer handles this one) is consistent without holding a transaction open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from flowledger.errors import InvalidArgument
from flowledger_core.domain import StepCounts, StoredEvent
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import (
    FLOW_EVENT_COLUMNS,
    flow_events_from_rows,
    flow_not_found,
    flow_uuid,
)

# The flow's head, then its generation chain (stopping where nothing older is inherited).
_HEAD = """
SELECT version, generation FROM flows
WHERE flow_id = %s AND namespace = %s AND deleted_at IS NULL
"""
_CHAIN = """
WITH RECURSIVE chain AS (
    SELECT flow_id, generation, base_version, inherit_flow_id, inherit_generation, 0 AS depth
    FROM flow_generations WHERE flow_id = %s AND generation = %s
  UNION ALL
    SELECT g.flow_id, g.generation, g.base_version, g.inherit_flow_id, g.inherit_generation,
           c.depth + 1
    FROM chain c
    JOIN flow_generations g ON g.flow_id = c.inherit_flow_id AND g.generation = c.inherit_generation
    WHERE c.base_version > 0
)
SELECT flow_id::text, generation, base_version FROM chain ORDER BY depth
"""
_RANGE = f"""
SELECT {FLOW_EVENT_COLUMNS} FROM event_log
WHERE flow_id = %s AND generation = %s AND version > %s AND version <= %s
ORDER BY version
"""
_COUNT = """
SELECT count(*),
       count(*) FILTER (WHERE e.event_type = 'step_finished'),
       count(*) FILTER (WHERE e.event_type = 'step_failed')
FROM unnest(%s::uuid[], %s::bigint[], %s::bigint[], %s::bigint[]) AS r(f, g, lo, hi)
JOIN event_log e ON e.flow_id = r.f AND e.generation = r.g AND e.version BETWEEN r.lo AND r.hi
"""


@dataclass(frozen=True)
class Range:
    """Versions ``lo..hi`` (inclusive) of the log, stored under ``(flow_id, generation)``."""

    flow_id: str
    generation: int
    lo: int
    hi: int


def ranges_from_chain(head_version: int, chain: Sequence[tuple[str, int, int]]) -> list[Range]:
    """The log's ranges, oldest first, from the chain rows (newest generation first)."""
    out: list[Range] = []
    upper = head_version
    for flow_id, generation, base in chain:
        if upper <= 0:
            break
        if upper > base:
            out.append(Range(flow_id, generation, base + 1, upper))
        upper = min(upper, base)
    out.reverse()
    return out


async def resolve(conn: Conn, namespace: str, flow_id: str) -> list[Range]:
    """The ranges of the flow's current log; NotFound when it is not readable in ``namespace``."""
    cur = await conn.execute(_HEAD, (flow_id, namespace))
    head = await cur.fetchone()
    if head is None:
        raise flow_not_found(namespace, flow_id)
    cur = await conn.execute(_CHAIN, (flow_id, head[1]))
    return ranges_from_chain(head[0], await cur.fetchall())


def clip(ranges: list[Range], after_version: int, to_version: int) -> list[Range]:
    """The parts of ``ranges`` in ``(after_version, to_version]`` (``to_version`` 0: no bound)."""
    out = []
    for r in ranges:
        lo = max(r.lo, after_version + 1)
        hi = r.hi if to_version <= 0 else min(r.hi, to_version)
        if lo <= hi:
            out.append(Range(r.flow_id, r.generation, lo, hi))
    return out


def plan_chunks(ranges: Sequence[Range], chunk_size: int) -> Iterator[list[Range]]:
    """The ranges cut into windows and grouped per chunk: every chunk but the last holds
    ``chunk_size`` versions (versions are gapless within a range), so each chunk can be fetched
    without knowing where the previous one ended."""
    chunk: list[Range] = []
    room = chunk_size
    for r in ranges:
        lo = r.lo
        while lo <= r.hi:
            hi = min(r.hi, lo + room - 1)
            chunk.append(Range(r.flow_id, r.generation, lo, hi))
            room -= hi - lo + 1
            lo = hi + 1
            if room == 0:
                yield chunk
                chunk, room = [], chunk_size
    if chunk:
        yield chunk


async def read_events(
    db: Database,
    namespace: str,
    flow_id: str,
    after_version: int,
    to_version: int,
    chunk_size: int,
) -> AsyncIterator[Sequence[StoredEvent]]:
    flow_id = flow_uuid(flow_id)
    if not 1 <= chunk_size <= 10_000:
        raise InvalidArgument.field("chunk_size", "must be 1..10000")
    if after_version < 0:
        raise InvalidArgument.field("after_version", "must be >= 0")
    if to_version < 0:
        raise InvalidArgument.field("to_version", "must be >= 0")
    ranges = clip(await db.run(lambda c: resolve(c, namespace, flow_id)), after_version, to_version)
    plan = plan_chunks(ranges, chunk_size)
    # The next chunk is fetched while the consumer handles this one, so the database works
    # while we do. One fetch at a time, and a connection is held per fetch only.
    pending = _prefetch(db, next(plan, None))
    try:
        while pending is not None:
            chunk = await pending
            pending = _prefetch(db, next(plan, None))
            if chunk:
                yield chunk
    finally:
        if pending is not None:
            await _discard(pending)


def _prefetch(db: Database, windows: list[Range] | None) -> asyncio.Task[list[StoredEvent]] | None:
    if windows is None:
        return None
    return asyncio.ensure_future(db.run(partial(_fetch, windows=windows)))


async def _discard(task: asyncio.Task[Any]) -> None:
    """Cancel a prefetch nobody will read and wait for it to let go of its connection."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: a failed fetch that nobody wanted is not an error


async def _fetch(conn: Conn, *, windows: list[Range]) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    for w in windows:
        cur = await conn.execute(_RANGE, (w.flow_id, w.generation, w.lo - 1, w.hi), binary=True)
        events.extend(flow_events_from_rows(w.flow_id, await cur.fetchall()))
    return events


async def count_steps(db: Database, namespace: str, flow_id: str) -> StepCounts:
    flow_id = flow_uuid(flow_id)

    async def count(conn: Conn) -> StepCounts:
        ranges = await resolve(conn, namespace, flow_id)
        cur = await conn.execute(
            _COUNT,
            (
                [r.flow_id for r in ranges],
                [r.generation for r in ranges],
                [r.lo for r in ranges],
                [r.hi for r in ranges],
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return StepCounts(events=row[0], steps_finished=row[1], steps_failed=row[2])

    return await db.run(count)
