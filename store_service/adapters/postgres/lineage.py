"""Which stored rows make up a flow's log: branch and prune generations resolved to ranges.

A flow's log is never copied. Generation ``g`` of flow ``f`` holds the versions above its
``base_version``; the versions at or below come from ``(inherit_flow_id, inherit_generation)``:
the parent (a branch's generation 0) or the previous generation (after a prune). Resolving walks
that chain once and yields ranges ``(flow_id, generation, lo..hi)``, oldest first. Every range
lies at or below the flow's head version, which only ever grows within a generation, so reading
the ranges in chunks with keyset pagination is consistent without holding a transaction open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from flowledger.errors import InvalidArgument
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import (
    EVENT_COLUMNS,
    event_from_row,
    flow_not_found,
    flow_uuid,
)
from store_service.domain import StepCounts, StoredEvent

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
SELECT {EVENT_COLUMNS} FROM event_log
WHERE flow_id = %s AND generation = %s AND version > %s AND version <= %s
ORDER BY version LIMIT %s
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
    chunk: list[StoredEvent] = []
    for r in ranges:
        after = r.lo - 1
        while after < r.hi:
            # A connection is held per query only, never while the consumer handles a chunk.
            rows = await db.run(partial(_fetch, r=r, after=after, limit=chunk_size - len(chunk)))
            if not rows:
                break  # cannot happen for a consistent log; never loop forever on one that is not
            chunk.extend(map(event_from_row, rows))
            after = rows[-1][2]
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def _fetch(conn: Conn, *, r: Range, after: int, limit: int) -> list[tuple[Any, ...]]:
    cur = await conn.execute(_RANGE, (r.flow_id, r.generation, after, r.hi, limit), binary=True)
    return await cur.fetchall()


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
