"""Snapshots: a flow's reduced state at a version, kept per generation.

A snapshot is saved as (flow, generation, version). A prune opens a new generation whose events
above its base are different ones, so a snapshot of generation ``h`` is valid for the current log
only while ``version`` is at or below every later generation's base (or, for the head generation,
at or below the head version).
"""

from __future__ import annotations

from flowledger.errors import InvalidArgument
from flowledger_core.domain import Snapshot
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import check_json, flow_deleted, flow_not_found, flow_uuid
from store_service.metrics import SNAPSHOTS_LOADED, SNAPSHOTS_SAVED

_LOCK_FLOW = """
SELECT generation, version, deleted_at IS NOT NULL FROM flows
WHERE flow_id = %s AND namespace = %s FOR SHARE
"""
_SAVE = """
INSERT INTO snapshots (flow_id, generation, version, state) VALUES (%s, %s, %s, %s::jsonb)
ON CONFLICT (flow_id, generation, version) DO NOTHING
"""
_HEAD = """
SELECT generation, version FROM flows
WHERE flow_id = %s AND namespace = %s AND deleted_at IS NULL
"""
_LOAD = """
SELECT s.version, s.state::text, s.created_at
FROM snapshots s
WHERE s.flow_id = %(id)s
  AND (%(max)s = 0 OR s.version <= %(max)s)
  AND s.version <= CASE
        WHEN s.generation = %(gen)s THEN %(head)s
        ELSE (SELECT min(g.base_version) FROM flow_generations g
              WHERE g.flow_id = s.flow_id AND g.generation > s.generation)
      END
ORDER BY s.version DESC, s.generation DESC
LIMIT 1
"""


async def save_snapshot(
    db: Database, namespace: str, flow_id: str, version: int, state_json: str
) -> None:
    flow_id = flow_uuid(flow_id)
    check_json(state_json, "state_json")
    if version < 0:
        raise InvalidArgument.field("version", "must be >= 0")

    async def tx(conn: Conn) -> None:
        # FOR SHARE: no prune may open a new generation between the check and the insert.
        cur = await conn.execute(_LOCK_FLOW, (flow_id, namespace))
        row = await cur.fetchone()
        if row is None:
            raise flow_not_found(namespace, flow_id)
        generation, head, deleted = row
        if deleted:
            raise flow_deleted(flow_id)
        if version > head:
            raise InvalidArgument.field("version", f"is past the flow's version {head}")
        await conn.execute(_SAVE, (flow_id, generation, version, state_json))

    await db.transaction(tx)
    SNAPSHOTS_SAVED.inc()


async def load_snapshot(
    db: Database, namespace: str, flow_id: str, max_version: int
) -> Snapshot | None:
    flow_id = flow_uuid(flow_id)
    if max_version < 0:
        raise InvalidArgument.field("max_version", "must be >= 0")

    async def load(conn: Conn) -> Snapshot | None:
        cur = await conn.execute(_HEAD, (flow_id, namespace))
        head = await cur.fetchone()
        if head is None:
            raise flow_not_found(namespace, flow_id)
        params = {"id": flow_id, "max": max_version, "gen": head[0], "head": head[1]}
        cur = await conn.execute(_LOAD, params)
        row = await cur.fetchone()
        return None if row is None else Snapshot(flow_id, row[0], row[1], row[2])

    snapshot = await db.run(load)
    SNAPSHOTS_LOADED.labels("hit" if snapshot else "miss").inc()
    return snapshot
