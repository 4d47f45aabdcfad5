"""Versioned definitions: versions numbered without gaps, states with their history.

Putting a version locks its ``definitions`` row (created on first use), so concurrent puts of one
definition take numbers max + 1 one after the other, and a rolled-back put leaves no gap. A
version's history (creation as a draft, then every transition) is read with the version in one
statement, so the two always agree. Documents are stored as jsonb and returned in canonical form.
The rules themselves are shared with the memory backend (:mod:`..definition_rules`).
"""

from __future__ import annotations

from typing import Any

from flowledger.errors import InvalidArgument
from flowledger_core.domain import (
    DefinitionPage,
    DefinitionState,
    DefinitionTransition,
    DefinitionTransitionCommand,
    NewDefinitionVersion,
    Page,
    StoredDefinition,
)
from store_service.adapters import definition_rules as rules
from store_service.adapters.postgres.db import Conn, Database


def _history(column: str) -> str:
    return (
        f"ARRAY(SELECT t.{column} FROM definition_transitions t WHERE t.namespace = v.namespace"
        " AND t.name = v.name AND t.version = v.version ORDER BY t.position)"
    )


_COLUMNS = (
    "v.namespace, v.name, v.version, v.state, v.definition::text, v.definition_hash, "
    "v.change_note, v.created_by, v.created_at, v.published_at, "
    + ", ".join(_history(c) for c in ("state", "change_note", "actor", "at"))
    + ", v.request_id"
)
_KEY = "v.namespace = %(ns)s AND v.name = %(name)s"
_GET = f"SELECT {_COLUMNS} FROM definition_versions v WHERE {_KEY} AND v.version = %(version)s"
_LATEST_PUBLISHED = (
    f"SELECT {_COLUMNS} FROM definition_versions v WHERE {_KEY} AND v.state = 'published' "
    "ORDER BY v.published_at DESC, v.version DESC LIMIT 1"
)
_LATEST = (
    f"SELECT {_COLUMNS} FROM definition_versions v WHERE {_KEY} ORDER BY v.version DESC LIMIT 1"
)
_BY_REQUEST = (
    f"SELECT {_COLUMNS} FROM definition_versions v WHERE {_KEY} AND v.request_id = %(rid)s"
)
_ENSURE_DEFINITION = """
INSERT INTO definitions (namespace, name, created_by) VALUES (%(ns)s, %(name)s, %(by)s)
ON CONFLICT (namespace, name) DO NOTHING
"""
_LOCK_DEFINITION = (
    "SELECT 1 FROM definitions WHERE namespace = %(ns)s AND name = %(name)s FOR UPDATE"
)
# Runs after the lock as its own statement: under READ COMMITTED it sees every version committed
# by the puts it waited for.
_INSERT_VERSION = """
INSERT INTO definition_versions (namespace, name, version, state, definition, definition_hash,
                                 change_note, created_by, request_id)
SELECT %(ns)s, %(name)s, coalesce(max(version), 0) + 1, 'draft', %(doc)s::jsonb, %(hash)s,
       %(note)s, %(by)s, %(rid)s
FROM definition_versions WHERE namespace = %(ns)s AND name = %(name)s
RETURNING version
"""
_RECORD = """
INSERT INTO definition_transitions (namespace, name, version, position, state, change_note, actor)
SELECT %(ns)s, %(name)s, %(version)s, coalesce(max(position), 0) + 1, %(state)s, %(note)s, %(by)s
FROM definition_transitions
WHERE namespace = %(ns)s AND name = %(name)s AND version = %(version)s
"""
_LOCK_VERSION = (
    "SELECT state FROM definition_versions "
    "WHERE namespace = %(ns)s AND name = %(name)s AND version = %(version)s FOR UPDATE"
)
_MOVE = """
UPDATE definition_versions
SET state = %(state)s,
    published_at = CASE WHEN %(state)s = 'published' THEN now() ELSE published_at END
WHERE namespace = %(ns)s AND name = %(name)s AND version = %(version)s
"""


def _from_row(row: tuple[Any, ...]) -> StoredDefinition:
    states, notes, actors, ats = row[10:14]
    return StoredDefinition(
        namespace=row[0],
        name=row[1],
        version=row[2],
        state=DefinitionState(row[3]),
        definition_json=rules.recanonical(row[4]),
        definition_hash=row[5],
        change_note=row[6],
        created_by=row[7],
        created_at=row[8],
        published_at=row[9],
        history=tuple(
            DefinitionTransition(DefinitionState(s), n, a, t)
            for s, n, a, t in zip(states, notes, actors, ats, strict=True)
        ),
        request_id=row[14],
    )


async def _fetch_one(conn: Conn, query: str, params: dict[str, Any]) -> StoredDefinition | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else _from_row(row)


async def put_version(db: Database, new: NewDefinitionVersion) -> tuple[StoredDefinition, bool]:
    new = rules.checked_new_version(new)
    p: dict[str, Any] = {
        "ns": new.namespace, "name": new.name, "doc": new.definition_json,
        "hash": new.definition_hash, "note": new.change_note, "by": new.created_by,
        "rid": new.request_id, "state": DefinitionState.DRAFT.value,
    }  # fmt: skip

    async def tx(conn: Conn) -> tuple[StoredDefinition, bool]:
        await conn.execute(_ENSURE_DEFINITION, p)
        await conn.execute(_LOCK_DEFINITION, p)
        if new.request_id is not None:
            earlier = await _fetch_one(conn, _BY_REQUEST, p)
            if earlier is not None:
                return rules.same_request(earlier, new), True
        latest = await _fetch_one(conn, _LATEST, p)
        if rules.reuses(latest, new):
            assert latest is not None
            return latest, True
        cur = await conn.execute(_INSERT_VERSION, p)
        row = await cur.fetchone()
        assert row is not None
        p["version"] = row[0]
        await conn.execute(_RECORD, p)
        stored = await _fetch_one(conn, _GET, p)
        assert stored is not None
        return stored, False

    return await db.transaction(tx)


async def get_version(db: Database, namespace: str, name: str, version: int) -> StoredDefinition:
    rules.check_ref(namespace, name)
    if version < 0:
        raise InvalidArgument.field("version", "must be >= 0 (0: the latest published)")
    params = {"ns": namespace, "name": name, "version": version}

    async def get(conn: Conn) -> StoredDefinition | None:
        return await _fetch_one(conn, _LATEST_PUBLISHED if version == 0 else _GET, params)

    found = await db.run(get)
    if found is None:
        raise rules.not_found(namespace, name, version)
    return found


async def list_versions(
    db: Database, namespace: str, name: str | None, page: Page
) -> DefinitionPage:
    rules.check_page(page)
    params: dict[str, Any] = {"ns": namespace, "name": name, "limit": page.size + 1}
    if name is None:
        params["after"] = rules.decode_name_token(page.token)
        # COLLATE "C": code point order, the order the memory backend sorts names in.
        query = (
            f'SELECT DISTINCT ON (v.name COLLATE "C") {_COLUMNS} FROM definition_versions v '
            "WHERE v.namespace = %(ns)s"
            + (' AND v.name COLLATE "C" > %(after)s' if params["after"] is not None else "")
            + ' ORDER BY v.name COLLATE "C", v.version DESC LIMIT %(limit)s'
        )
    else:
        rules.check_ref(namespace, name)
        params["after"] = rules.decode_version_token(page.token)
        query = (
            f"SELECT {_COLUMNS} FROM definition_versions v WHERE {_KEY}"
            + (" AND v.version < %(after)s" if params["after"] is not None else "")
            + " ORDER BY v.version DESC LIMIT %(limit)s"
        )

    async def fetch(conn: Conn) -> list[tuple[Any, ...]]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    versions = [_from_row(r) for r in await db.run(fetch)]
    if len(versions) <= page.size:
        return DefinitionPage(tuple(versions))
    versions = versions[: page.size]
    last = versions[-1]
    token = (
        rules.encode_name_token(last.name)
        if name is None
        else rules.encode_version_token(last.version)
    )
    return DefinitionPage(tuple(versions), token)


async def transition(db: Database, cmd: DefinitionTransitionCommand) -> StoredDefinition:
    rules.checked_transition(cmd)
    p: dict[str, Any] = {
        "ns": cmd.namespace, "name": cmd.name, "version": cmd.version,
        "state": cmd.to_state.value, "note": cmd.change_note, "by": cmd.actor,
    }  # fmt: skip

    async def tx(conn: Conn) -> StoredDefinition:
        cur = await conn.execute(_LOCK_VERSION, p)
        row = await cur.fetchone()
        if row is None:
            raise rules.not_found(cmd.namespace, cmd.name, cmd.version)
        if rules.transition_applies(DefinitionState(row[0]), cmd):
            await conn.execute(_MOVE, p)
            await conn.execute(_RECORD, p)
        stored = await _fetch_one(conn, _GET, p)
        assert stored is not None
        return stored

    return await db.transaction(tx)
