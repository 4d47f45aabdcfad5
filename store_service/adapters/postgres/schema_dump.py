"""A deterministic description of the migrated schema, to detect drift.

Built from the catalogs (tables, columns with types, defaults and nullability, constraints and
indexes with their definitions, sequences, triggers, functions, views, enums, extensions), one
line per fact, sorted. Not ``pg_dump``: its output changes between server versions and carries
noise (SET lines, comments) that would make the snapshot flap.

``store_service/schema/schema.txt`` and ``schema.sha256`` are the committed snapshot of a fresh
database after all migrations. Regenerate them after adding a migration or changing a function
file (store_service/sql/) with::

    python -m store_service.adapters.postgres.schema_dump --write [--database-url URL]

(URL: any server where a scratch database may be created; default ``$DATABASE_URL``). The store
logs a warning at start-up when the live schema's hash differs from the committed one.

Functions are described by content (the md5 of their source, with their signature and SET
options), so the snapshot changes with a function file's body. :func:`check_functions` compares
the live functions with ``store_service/sql/functions/`` directly: every function of the schema
has its file, one signature, and the file's body.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from store_service.adapters.postgres.migrate import apply_migrations, load_functions

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
UPDATE_HINT = "python -m store_service.adapters.postgres.schema_dump --write"

# Each query yields rows of text; {s} is the schema's oid. Objects owned by extensions are left
# out (they belong to the extension, and their definitions vary by extension version).
_NOT_EXT = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
_QUERIES: list[tuple[str, str]] = [
    ("extension", "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'"),
    (
        "table",
        # Storage options (fillfactor) too: they decide whether an update can be HOT.
        "SELECT c.relname, c.relkind::text, coalesce(array_to_string(c.reloptions, ','), '') "
        "FROM pg_class c WHERE c.relnamespace = {s} "
        "AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND " + _NOT_EXT.format(oid="c.oid"),
    ),
    (
        "column",
        "SELECT c.relname, lpad(a.attnum::text, 4, '0'), a.attname, "
        "format_type(a.atttypid, a.atttypmod), "
        "CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END, "
        "coalesce('DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid), ''), "
        "a.attidentity::text || a.attgenerated::text "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum "
        "WHERE c.relnamespace = {s} AND c.relkind IN ('r', 'p', 'v', 'm') "
        "AND a.attnum > 0 AND NOT a.attisdropped",
    ),
    (
        "constraint",
        # NOT NULL constraints are rows of pg_constraint only since Postgres 18: the column lines
        # already say NOT NULL, so they are left out to keep the dump version-independent.
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid "
        "WHERE c.relnamespace = {s} AND k.contype IN ('p', 'u', 'f', 'c', 'x')",
    ),
    (
        "index",
        "SELECT c.relname, i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
        "JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE c.relnamespace = {s}",
    ),
    (
        "sequence",
        "SELECT c.relname, format_type(q.seqtypid, NULL), q.seqstart::text, "
        "q.seqincrement::text, q.seqmin::text, q.seqmax::text, q.seqcycle::text "
        "FROM pg_sequence q JOIN pg_class c ON c.oid = q.seqrelid WHERE c.relnamespace = {s}",
    ),
    (
        "trigger",
        "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = {s} AND NOT t.tgisinternal",
    ),
    (
        "function",
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid), "
        "pg_get_function_result(p.oid), md5(p.prosrc), "
        # A function's SET options (plan_cache_mode, enable_seqscan) change how it runs.
        "coalesce(array_to_string(p.proconfig, ','), '') FROM pg_proc p "
        "WHERE p.pronamespace = {s} AND " + _NOT_EXT.format(oid="p.oid"),
    ),
    (
        "view",
        "SELECT c.relname, md5(pg_get_viewdef(c.oid)) FROM pg_class c "
        "WHERE c.relnamespace = {s} AND c.relkind IN ('v', 'm')",
    ),
    (
        "enum",
        "SELECT t.typname, e.enumsortorder::text, e.enumlabel FROM pg_type t "
        "JOIN pg_enum e ON e.enumtypid = t.oid WHERE t.typnamespace = {s}",
    ),
]


async def dump_schema(conn: psycopg.AsyncConnection[Any]) -> str:
    """The sorted description of the connection's current schema."""
    cur = await conn.execute("SELECT current_schema(), current_schema()::regnamespace::oid")
    row = await cur.fetchone()
    assert row is not None
    schema_name, schema_oid = row
    lines: list[str] = []
    for kind, query in _QUERIES:
        cur = await conn.execute(query.format(s=int(schema_oid)).encode())
        for values in await cur.fetchall():
            text = " | ".join(str(v) for v in values)
            # Index definitions name the schema; the snapshot should not depend on it.
            line = f"{kind} | {text.replace(f' ON {schema_name}.', ' ON ')}"
            lines.append(line.rstrip(" |"))
    lines.sort()
    return "\n".join(lines) + "\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def committed_snapshot() -> tuple[str, str]:
    """(schema.txt, schema.sha256) as shipped with the package."""
    base = resources.files("store_service").joinpath("schema")
    text = base.joinpath("schema.txt").read_text(encoding="utf-8")
    digest = base.joinpath("schema.sha256").read_text(encoding="utf-8").split()[0]
    return text, digest


async def check_schema(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """None when the live schema matches the committed snapshot, else a description of the drift."""
    try:
        _, expected = committed_snapshot()
    except (FileNotFoundError, IndexError):
        return "no committed schema snapshot to compare with (store_service/schema/)"
    actual = sha256_text(await dump_schema(conn))
    if actual == expected:
        return None
    return (
        f"schema drift: the database schema hashes to {actual}, the committed snapshot to "
        f"{expected}; compare `dump_schema()` with store_service/schema/schema.txt"
    )


_FUNCTIONS = (
    "SELECT p.proname, md5(p.prosrc) FROM pg_proc p "
    "WHERE p.pronamespace = {s} AND " + _NOT_EXT.format(oid="p.oid")
)


async def check_functions(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """How the schema's functions differ from ``store_service/sql/functions/`` (empty: not)."""
    files = {fn.name: fn for fn in load_functions()}
    cur = await conn.execute(
        _FUNCTIONS.format(s="current_schema()::regnamespace::oid").encode()
    )
    deployed: dict[str, list[str]] = {}
    for name, digest in await cur.fetchall():
        deployed.setdefault(name, []).append(digest)
    problems: list[str] = []
    for name, digests in sorted(deployed.items()):
        fn = files.get(name)
        if fn is None:
            problems.append(f"function {name} is not defined in store_service/sql/functions/")
        elif len(digests) > 1:
            problems.append(
                f"function {name} has {len(digests)} signatures, {fn.filename} defines one: "
                "a migration should drop the others"
            )
        elif digests[0] != hashlib.md5(fn.body.encode(), usedforsecurity=False).hexdigest():
            problems.append(f"function {name}'s body differs from store_service/sql/{fn.filename}")
    problems += [
        f"function {name} (store_service/sql/{files[name].filename}) is not in the schema"
        for name in sorted(files.keys() - deployed.keys())
    ]
    return problems


async def dump_fresh(server_url: str) -> str:
    """Migrate a scratch database on ``server_url``'s server from empty and dump it."""
    name = f"flowledger_schema_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
            await apply_migrations(url)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                return await dump_schema(conn)
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def write_snapshot(text: str, directory: Path = SCHEMA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.txt").write_text(text, encoding="utf-8")
    (directory / "schema.sha256").write_text(f"{sha256_text(text)}  schema.txt\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--write", action="store_true", help="write store_service/schema/")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or set DATABASE_URL")
    text = asyncio.run(dump_fresh(args.database_url))
    if args.write:
        write_snapshot(text)
        print(f"wrote {SCHEMA_DIR}/schema.txt ({sha256_text(text)})")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
