"""Work leases: claim runnable flows with SKIP LOCKED, renew and release them.

Every expiry is computed and compared on the database clock (``now()``), never the store's, so
replicas with skewed clocks agree on whether a lease is live. A claim takes each flow's fencing
token from the global sequence ``flow_lease_tokens``, so a takeover's token is always larger than
the one an earlier holder may still be writing with; the append path refuses that older token
(:mod:`.appendsql`). The rules shared with the memory backend live in :mod:`..lease_rules`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flowledger_core.domain import ClaimRequest, FlowLease
from store_service.adapters import lease_rules as rules
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import (
    FLOW_COLUMNS,
    flow_deleted,
    flow_from_row,
    flow_not_found,
    flow_uuid,
)

# The flow's columns, then the lease's: (..., lease_expires_at, lease_owner, what is left of it
# in ms by the database's clock as the statement returns).
_RETURNING = (
    FLOW_COLUMNS + ", lease_expires_at, lease_owner, "
    "greatest(0, floor(extract(epoch FROM lease_expires_at - clock_timestamp()) * 1000))::bigint"
)
_LEASE = "now() + %(ms)s * interval '1 millisecond'"

# Each inner SELECT locks what it picks and skips what other claimers hold; a row changed since
# the statement's snapshot is re-checked against the WHERE clause before it is locked, so a lease
# taken meanwhile is never taken twice. Engines claim in the order flows became claimable:
# QUEUED/RUNNING ones since they entered that status (status_since, migration 0008), WAITING
# ones since their wake_at. The two kinds come from two index scans that stop at the limit; the
# better half of what they locked is leased, the rest is released at commit.
_FREE = "deleted_at IS NULL AND (lease_expires_at IS NULL OR lease_expires_at <= now())"
# Each pick carries the owner its row still records (picked_owner): set only on a lease that
# expired unreleased (a release, an ending append or a wait clears it), which the claim takes
# over (FlowLease.previous_owner).
_CLAIM_ENGINE = """
WITH runnable AS (
    SELECT flow_id AS picked_id, status_since AS ready_at, lease_owner AS picked_owner
    FROM flows
    WHERE status IN ('queued', 'running') AND {free} {filters}
    ORDER BY status_since, flow_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), woken AS (
    SELECT flow_id AS picked_id, wake_at AS ready_at, lease_owner AS picked_owner FROM flows
    WHERE status = 'waiting' AND wake_at <= now() AND {free} {filters}
    ORDER BY wake_at, flow_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM (SELECT * FROM runnable UNION ALL SELECT * FROM woken) both_kinds
    ORDER BY ready_at, picked_id
    LIMIT %(limit)s
)
UPDATE flows SET lease_owner = %(owner)s, lease_token = nextval('flow_lease_tokens'),
                 lease_expires_at = {lease}
FROM picked WHERE flows.flow_id = picked.picked_id
RETURNING {columns}
"""
# Task workers: flows waiting on one of their queues, whatever their wake_at, longest first.
_CLAIM_TASKS = """
WITH picked AS (
    SELECT flow_id AS picked_id, lease_owner AS picked_owner FROM flows
    WHERE status = 'waiting' AND task_queue = ANY(%(queues)s::text[]) AND {free} {filters}
    ORDER BY status_since, flow_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE flows SET lease_owner = %(owner)s, lease_token = nextval('flow_lease_tokens'),
                 lease_expires_at = {lease}
FROM picked WHERE flows.flow_id = picked.picked_id
RETURNING {columns}
"""
_RENEW = f"""
UPDATE flows SET lease_expires_at = {_LEASE}
WHERE flow_id = %(id)s AND namespace = %(ns)s AND deleted_at IS NULL
  AND lease_token = %(token)s AND lease_owner = %(owner)s AND lease_expires_at > now()
RETURNING {_RETURNING}
"""
_RELEASE = """
UPDATE flows SET lease_owner = NULL, lease_expires_at = NULL
WHERE flow_id = %(id)s AND namespace = %(ns)s AND lease_token = %(token)s
RETURNING 1
"""
_FIND = "SELECT deleted_at IS NOT NULL FROM flows WHERE flow_id = %(id)s AND namespace = %(ns)s"


def _lease(row: tuple[Any, ...]) -> FlowLease:
    flow = flow_from_row(row)
    return FlowLease(
        flow=flow, fencing_token=flow.lease_token, expires_at=row[-3], owner=row[-2],
        remaining_ms=row[-1],
    )


async def claim_flows(db: Database, req: ClaimRequest) -> tuple[FlowLease, ...]:
    rules.check_claim(req)
    params: dict[str, Any] = {"owner": req.owner, "limit": req.limit, "ms": req.lease_ms}
    filters = ""
    if req.namespaces:
        filters += " AND namespace = ANY(%(namespaces)s::text[])"
        params["namespaces"] = list(req.namespaces)
    if req.flow_ids:
        filters += " AND flow_id = ANY(%(ids)s::uuid[])"
        params["ids"] = [flow_uuid(f, f"flow_ids[{i}]") for i, f in enumerate(req.flow_ids)]
    shape = _CLAIM_ENGINE
    if req.task_queues:
        shape = _CLAIM_TASKS
        params["queues"] = list(req.task_queues)
    # After the lease's columns: the claim order's status_since, then the previous owner.
    query = shape.format(
        lease=_LEASE, free=_FREE, filters=filters,
        columns=_RETURNING + ", status_since, coalesce(picked_owner, '')",
    )  # fmt: skip

    async def tx(conn: Conn) -> list[tuple[Any, ...]]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    rows = await db.transaction(tx)
    # RETURNING follows no order: hand them out in the order they were picked.
    key = rules.task_claim_order if req.task_queues else rules.engine_claim_order
    picked = sorted(
        ((replace(_lease(r[:-2]), previous_owner=r[-1]), r[-2]) for r in rows),
        key=lambda x: key(x[0].flow, x[1]),
    )
    return tuple(lease for lease, _ in picked)


async def renew_lease(
    db: Database, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
) -> FlowLease:
    rules.check_renewal(owner, fencing_token, lease_ms)
    params: dict[str, Any] = {
        "id": flow_uuid(flow_id), "ns": namespace, "owner": owner, "token": fencing_token,
        "ms": lease_ms,
    }  # fmt: skip

    async def tx(conn: Conn) -> FlowLease:
        cur = await conn.execute(_RENEW, params)
        row = await cur.fetchone()
        if row is not None:
            return _lease(row)
        await _refuse(conn, params)
        raise rules.lease_lost(params["id"], fencing_token)

    return await db.transaction(tx)


async def release_lease(db: Database, namespace: str, flow_id: str, fencing_token: int) -> bool:
    rules.check_token(fencing_token)
    canonical_id = flow_uuid(flow_id)
    params = {"id": canonical_id, "ns": namespace, "token": fencing_token}

    async def tx(conn: Conn) -> bool:
        cur = await conn.execute(_RELEASE, params)
        if await cur.fetchone() is not None:
            return True
        cur = await conn.execute(_FIND, params)
        if await cur.fetchone() is None:
            raise flow_not_found(namespace, canonical_id)
        return False

    return await db.transaction(tx)


async def _refuse(conn: Conn, params: dict[str, Any]) -> None:
    """Raise the more specific refusal of a renewal when there is one (no flow, deleted)."""
    cur = await conn.execute(_FIND, params)
    row = await cur.fetchone()
    if row is None:
        raise flow_not_found(params["ns"], params["id"])
    if row[0]:
        raise flow_deleted(params["id"])
