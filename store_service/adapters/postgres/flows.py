"""Flow records: create (root or O(1) branch), get, list, delete, prune."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flowledger.errors import AlreadyExists, InvalidArgument, VersionConflict
from flowledger_core.domain import (
    Append,
    AppendResult,
    CreatedFlow,
    Flow,
    FlowFilter,
    FlowLease,
    FlowPage,
    FlowStatus,
    NewBranch,
    NewFlow,
    Page,
    Prune,
)
from flowledger_core.id_prefix import id_range
from store_service.adapters import lease_rules
from store_service.adapters.flow_limits import check_events_per_flow
from store_service.adapters.flow_rules import REOPENED, check_is_branch, checked_prefix, reopens
from store_service.adapters.initial_append import as_initial, bind_initial, check_initial
from store_service.adapters.postgres import appendsql, pagetoken
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import (
    FLOW_COLUMNS,
    check_json,
    flow_deleted,
    flow_from_row,
    flow_not_found,
    flow_uuid,
)
from store_service.metrics import EVENTS_APPENDED, VERSION_CONFLICTS

_INSERT_FLOW = f"""
INSERT INTO flows (flow_id, namespace, name, status, metadata, created_by,
                   parent_flow_id, parent_generation, fork_version, version)
VALUES (%(id)s, %(ns)s, %(name)s, %(status)s, %(meta)s::jsonb, %(by)s,
        %(parent)s, %(pgen)s, %(fork)s, %(fork)s)
ON CONFLICT (flow_id) DO NOTHING
RETURNING {FLOW_COLUMNS}
"""
_INSERT_GENERATION = """
INSERT INTO flow_generations (flow_id, generation, base_version, inherit_flow_id,
                              inherit_generation, created_by, reason)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
# What makes a create call "the same" as the existing flow (its later status and version may
# have moved on: a retry after the flow started must still be recognised).
_SAME_CREATION = """
SELECT namespace = %(ns)s AND name = %(name)s AND metadata = %(meta)s::jsonb
       AND created_by = %(by)s AND parent_flow_id IS NOT DISTINCT FROM %(parent)s::uuid
       AND fork_version = %(fork)s,
       {columns}
FROM flows WHERE flow_id = %(id)s
""".replace("{columns}", FLOW_COLUMNS)
# A root flow, its lease and its first append in one statement (migration 0006).
_CREATE_ROOT = (
    "SELECT * FROM flowledger_create_flow(%s, %s, %s, %s, %s, %s, %s, %s, "
    + appendsql.APPEND_ARGUMENTS
    + ")"
)
_GET = f"SELECT {FLOW_COLUMNS} FROM flows WHERE flow_id = %s AND namespace = %s"
_LOCK_PARENT = f"{_GET} FOR SHARE"
_LOCK = f"{_GET} FOR UPDATE"


@dataclass(frozen=True)
class _Creation:
    params: dict[str, Any]
    generated_id: bool


async def create_flow(db: Database, new: NewFlow) -> tuple[Flow, bool]:
    created = await create_flow_with(db, new, None, None, lambda cmd: cmd, 0)
    return created.flow, created.existed


async def create_flow_with(
    db: Database,
    new: NewFlow,
    lease: tuple[str, int] | None,
    initial: Append | None,
    check_append: Callable[[Append], Append],
    max_events: int,
) -> CreatedFlow:
    """``EventStore.create_flow_with``: one ``flowledger_create_flow`` statement makes the flow,
    its lease and its first append (``check_append``: the appender's own checks, run before
    anything is written; ``max_events``: the events-per-flow limit)."""
    if lease is not None:
        lease_rules.check_lease_request(*lease)
    c = _creation(new.flow_id, new.namespace, new.name, new.metadata_json, new.created_by)
    p = c.params
    cmd = None
    if initial is not None:
        check_initial(initial, new.status)
        with as_initial():
            cmd = check_append(bind_initial(initial, _unborn(c), None))
            # A new flow is at version 0: the limit is known before it is made.
            check_events_per_flow(cmd, 0, max_events)
    owner, ms = lease if lease is not None else (None, None)
    params = (p["id"], p["ns"], p["name"], new.status.value, p["meta"], p["by"], owner, ms,
              *appendsql.batch_params([] if cmd is None else [cmd], max_events))  # fmt: skip

    async def once(conn: Conn) -> CreatedFlow | None:
        cur = await conn.execute(_CREATE_ROOT, params)
        row = await cur.fetchone()
        assert row is not None  # the function always answers one row
        if not row[0]:
            return None
        flow_row, lease_row, append_row = row[1:17], row[17:19], row[19:]
        flow = flow_from_row(flow_row)
        granted = None
        if owner is not None:
            # Granted by this transaction, just committed: all of it is left.
            granted = FlowLease(
                flow, flow.lease_token, lease_row[0], lease_row[1], remaining_ms=ms
            )
        answer = None
        if cmd is not None:
            result = appendsql.outcome(cmd, append_row, max_events)
            assert isinstance(result, AppendResult)  # anything else raised in the function
            answer = result
            for event in cmd.events:
                EVENTS_APPENDED.labels(event.type.value).inc()
        return CreatedFlow(flow, False, granted, answer)

    created = await db.run(once)
    if created is not None:
        return created
    # It existed (a repeat, or our own first attempt whose answer was lost): no lease, no append.
    c.params.update(status=new.status.value, parent=None, fork=0)
    return await _create(db, c)


def _unborn(c: _Creation) -> Flow:
    """The flow ``c`` would create, as far as binding an initial append needs it."""
    now = datetime.now(UTC)
    p = c.params
    return Flow(p["id"], p["ns"], p["name"], FlowStatus.QUEUED, p["meta"], None, 0, 0, 0, p["by"],
                now, now)


async def create_branch(db: Database, new: NewBranch) -> tuple[Flow, bool]:
    parent = flow_uuid(new.parent_flow_id, "parent_flow_id")
    if new.fork_version < 0:
        raise InvalidArgument.field("fork_version", "must be >= 0")
    c = _creation(new.flow_id, new.namespace, new.name, new.metadata_json, new.created_by)
    c.params.update(status=new.status.value, parent=parent, fork=new.fork_version)
    created = await _create(db, c)
    return created.flow, created.existed


def _creation(flow_id: str | None, ns: str, name: str, meta: str, by: str) -> _Creation:
    if not 1 <= len(ns) <= 128:
        raise InvalidArgument.field("namespace", "must be 1..128 characters")
    if len(name) > 256:
        raise InvalidArgument.field("name", "must be at most 256 characters")
    check_json(meta or "{}", "metadata_json")
    # The id is fixed before the first attempt, so a retry after a lost COMMIT finds its own flow.
    generated = not flow_id
    fid = str(uuid.uuid4()) if generated else flow_uuid(flow_id or "")
    params: dict[str, Any] = {"id": fid, "ns": ns, "name": name, "meta": meta or "{}", "by": by}
    params["pgen"] = None
    return _Creation(params, generated)


async def _create(db: Database, c: _Creation) -> CreatedFlow:
    p = c.params

    async def tx(conn: Conn) -> CreatedFlow:
        inherit: tuple[str | None, int | None] = (None, None)
        if p["parent"] is not None:
            # A repeat must find its branch even if the parent moved on (pruned, deleted) since.
            cur = await conn.execute("SELECT 1 FROM flows WHERE flow_id = %s", (p["id"],))
            if await cur.fetchone() is not None:
                return CreatedFlow(*(await _existing(conn, c)))
            # FOR SHARE: the parent cannot be pruned or deleted under the branch being created.
            cur = await conn.execute(_LOCK_PARENT, (p["parent"], p["ns"]))
            row = await cur.fetchone()
            if row is None or row[12]:
                raise flow_not_found(p["ns"], p["parent"])
            parent = flow_from_row(row)
            if p["fork"] > parent.version:
                raise InvalidArgument.field(
                    "fork_version", f"is past the parent's version {parent.version}"
                )
            p["pgen"] = parent.generation
            inherit = (parent.flow_id, parent.generation)
        cur = await conn.execute(_INSERT_FLOW, p)
        row = await cur.fetchone()
        if row is None:
            return CreatedFlow(*(await _existing(conn, c)))
        await conn.execute(
            _INSERT_GENERATION, (p["id"], 0, p["fork"], *inherit, p["by"], "created")
        )
        return CreatedFlow(flow_from_row(row), False)

    return await db.transaction(tx)


async def _existing(conn: Conn, c: _Creation) -> tuple[Flow, bool]:
    cur = await conn.execute(_SAME_CREATION, c.params)
    row = await cur.fetchone()
    assert row is not None  # ON CONFLICT saw it, and flows are never removed
    if not row[0]:
        raise AlreadyExists(
            f"flow {c.params['id']} already exists with other attributes",
            reason="FLOW_EXISTS",
            metadata={"flow_id": c.params["id"]},
        )
    # A store-generated id can only collide with our own earlier attempt (lost COMMIT reply).
    return flow_from_row(row[1:]), not c.generated_id


async def get_flow(db: Database, namespace: str, flow_id: str, include_deleted: bool) -> Flow:
    flow_id = flow_uuid(flow_id)

    async def get(conn: Conn) -> Flow:
        cur = await conn.execute(_GET, (flow_id, namespace))
        row = await cur.fetchone()
        if row is None or (row[12] and not include_deleted):
            raise flow_not_found(namespace, flow_id)
        return flow_from_row(row)

    return await db.run(get)


async def list_flows(db: Database, flt: FlowFilter, page: Page) -> FlowPage:
    if not 1 <= page.size <= 1000:
        raise InvalidArgument.field("page_size", "must be 1..1000")
    after = pagetoken.decode(page.token)
    parent = flow_uuid(flt.parent_flow_id, "parent_flow_id") if flt.parent_flow_id else None
    where = ["namespace = %(ns)s"]
    params: dict[str, Any] = {"ns": flt.namespace, "limit": page.size + 1}
    if flt.statuses:
        where.append("status = ANY(%(statuses)s::text[])")
        params["statuses"] = [s.value for s in flt.statuses]
    if flt.name is not None:
        where.append("name = %(name)s")
        params["name"] = flt.name
    if parent is not None:
        where.append("parent_flow_id = %(parent)s")
        params["parent"] = parent
    if not flt.include_deleted:
        where.append("deleted_at IS NULL")
    if flt.flow_id_prefix:
        # One range of the (namespace, flow_id) key: UUIDs sort as their canonical text.
        where.append("flow_id BETWEEN %(id_low)s::uuid AND %(id_high)s::uuid")
        params["id_low"], params["id_high"] = id_range(checked_prefix(flt))
    if after is not None:
        where.append("(created_at, flow_id) < (%(at)s, %(after_id)s)")
        params["at"], params["after_id"] = after
    query = (
        f"SELECT {FLOW_COLUMNS} FROM flows WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, flow_id DESC LIMIT %(limit)s"
    )

    async def fetch(conn: Conn) -> list[tuple[Any, ...]]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    flows = [flow_from_row(r) for r in await db.run(fetch)]
    if len(flows) <= page.size:
        return FlowPage(tuple(flows))
    flows = flows[: page.size]
    return FlowPage(tuple(flows), pagetoken.encode(flows[-1].created_at, flows[-1].flow_id))


async def delete_branch(
    db: Database, namespace: str, flow_id: str, deleted_by: str, reason: str
) -> Flow:
    flow_id = flow_uuid(flow_id)
    # Branches only: a root flow is never marked deleted.
    update = f"""
        UPDATE flows SET deleted_at = now(), deleted_by = %s, delete_reason = %s, updated_at = now()
        WHERE flow_id = %s AND namespace = %s AND deleted_at IS NULL
          AND parent_flow_id IS NOT NULL
        RETURNING {FLOW_COLUMNS}
    """

    async def tx(conn: Conn) -> Flow:
        cur = await conn.execute(update, (deleted_by, reason, flow_id, namespace))
        row = await cur.fetchone()
        if row is None:  # already deleted (idempotent), a root, or absent
            cur = await conn.execute(_GET, (flow_id, namespace))
            row = await cur.fetchone()
            if row is None:
                raise flow_not_found(namespace, flow_id)
            check_is_branch(flow_from_row(row))
        return flow_from_row(row)

    return await db.transaction(tx)


async def prune(db: Database, cmd: Prune) -> tuple[Flow, bool]:
    flow_id = flow_uuid(cmd.flow_id)
    if not 1 <= len(cmd.command_id) <= 128:
        raise InvalidArgument.field("command_id", "must be 1..128 characters")
    if cmd.keep_through_version < 0:
        raise InvalidArgument.field("keep_through_version", "must be >= 0")
    conflicts = 0

    async def tx(conn: Conn) -> tuple[Flow, bool]:
        nonlocal conflicts
        cur = await conn.execute(_LOCK, (flow_id, cmd.namespace))
        row = await cur.fetchone()
        if row is None:
            raise flow_not_found(cmd.namespace, flow_id)
        flow = flow_from_row(row)
        cur = await conn.execute(
            "SELECT kind FROM flow_commands WHERE flow_id = %s AND command_id = %s",
            (flow_id, cmd.command_id),
        )
        done = await cur.fetchone()
        if done is not None:
            if done[0] != "prune":
                raise AlreadyExists(
                    f"command id {cmd.command_id!r} was already used by an {done[0]} "
                    f"of flow {flow_id}",
                    reason="COMMAND_ID_REUSED",
                    metadata={"flow_id": flow_id, "command_id": cmd.command_id},
                )
            return flow, True
        if flow.deleted:
            raise flow_deleted(flow_id)
        if cmd.expected_version != flow.version:
            conflicts = 1
            raise VersionConflict(flow_id, cmd.expected_version, flow.version)
        if cmd.keep_through_version > flow.version:
            raise InvalidArgument.field(
                "keep_through_version", f"is past the flow's version {flow.version}"
            )
        gen = flow.generation + 1
        await conn.execute(
            _INSERT_GENERATION,
            (flow_id, gen, cmd.keep_through_version, flow_id, flow.generation,
             cmd.pruned_by, cmd.reason),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO flow_commands (flow_id, command_id, kind, first_version, last_version,"
            " seqs) VALUES (%s, %s, 'prune', %s, %s, '{}')",
            (flow_id, cmd.command_id, cmd.keep_through_version, cmd.keep_through_version),
        )
        # A prune that cuts an ended flow's ending reopens it (flow_rules, decision 0022).
        status = REOPENED.value if reopens(flow, cmd.keep_through_version) else None
        cur = await conn.execute(
            "UPDATE flows SET generation = %s, version = %s, updated_at = now(),"
            " status = coalesce(%s, status),"
            " wake_at = CASE WHEN %s::text IS NULL THEN wake_at END,"
            " task_queue = CASE WHEN %s::text IS NULL THEN task_queue END,"
            " status_since = CASE WHEN %s::text IS NULL THEN status_since ELSE now() END"
            f" WHERE flow_id = %s RETURNING {FLOW_COLUMNS}",
            (gen, cmd.keep_through_version, status, status, status, status, flow_id),
        )
        updated = await cur.fetchone()
        assert updated is not None
        return flow_from_row(updated), False

    try:
        return await db.transaction(tx)
    finally:
        if conflicts:
            VERSION_CONFLICTS.inc()
