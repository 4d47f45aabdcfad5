"""SQL functions live once, in ``store_service/sql/functions/``, applied again by checksum.

Numbered migrations after 0010 create no function; every function of the schema has its file;
the deployed body is the file's, and so is the snapshot's (store_service/schema/schema.txt); a
changed file is applied again, once, keeping the grants; an unchanged one is left alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from store_service.adapters.postgres import migrate
from store_service.adapters.postgres.migrate import (
    Applied,
    MigrationError,
    SqlFunction,
    apply_schema,
    load_functions,
    load_migrations,
)
from store_service.adapters.postgres.schema_dump import (
    check_functions,
    committed_snapshot,
    dump_schema,
)

NAMES = ["flowledger_append_batch", "flowledger_create_flow"]


async def _query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql.encode(), params)
        return await cur.fetchall() if cur.description else []


async def _drift(url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await check_functions(conn)


async def _dump(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await dump_schema(conn)


def _code(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _edited(fn: SqlFunction, marker: str) -> SqlFunction:
    """``fn`` with a comment added to its body (a new body, the same behaviour)."""
    sql = fn.sql.replace("AS $fn$\n", f"AS $fn$\n-- {marker}\n", 1)
    return SqlFunction(fn.name, sql, hashlib.sha256(sql.encode()).hexdigest())


# -- the files -----------------------------------------------------------------------------


def test_each_function_file_defines_its_function() -> None:
    functions = load_functions()
    assert [fn.name for fn in functions] == NAMES
    for fn in functions:
        assert f"CREATE OR REPLACE FUNCTION {fn.name}(" in fn.sql
        assert f"GRANT EXECUTE ON FUNCTION {fn.name}(" in fn.sql


def test_no_numbered_migration_after_0010_creates_a_function(tmp_path: Path) -> None:
    creates = re.compile(r"\bCREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\b", re.I)
    defining = [m.version for m in load_migrations() if creates.search(_code(m.sql))]
    assert defining == [3, 4, 6, 8, 9, 10]  # the frozen history; none after 0010
    # A comment may say so; a statement may not.
    (tmp_path / "0011_talks.sql").write_text("-- CREATE FUNCTION lives elsewhere\nSELECT 1;\n")
    assert [m.version for m in load_migrations(tmp_path)] == [11]
    for text in ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
                 "create or replace\n  function public.f() returns int language sql as $$ 1 $$;",
                 "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$;"):  # fmt: skip
        (tmp_path / "0012_sneaks.sql").write_text(text)
        with pytest.raises(MigrationError, match=r"0012_sneaks\.sql creates .*sql/functions"):
            load_migrations(tmp_path)
    # Up to 0010 the migrations defined functions themselves; they stay as they were applied.
    (tmp_path / "0012_sneaks.sql").rename(tmp_path / "0010_old.sql")
    assert [m.version for m in load_migrations(tmp_path)] == [10, 11]


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN END $fn$;"),
        ("f.sql", "CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE sql AS $fn$ 1 $fn$;"),
        ("f.sql", "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
        ("f.sql", "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $a$ 1 $a$;\n"
                  "CREATE OR REPLACE FUNCTION h() RETURNS int LANGUAGE sql AS $a$ 1 $a$;"),
        ("Bad-Name.sql", "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $a$ 1 $a$;"),
    ],
)  # fmt: skip
def test_a_function_file_that_could_not_run_twice_or_names_another_is_refused(
    tmp_path: Path, filename: str, text: str
) -> None:
    (tmp_path / filename).write_text(text)
    with pytest.raises(MigrationError, match="function file"):
        load_functions(tmp_path)


def test_the_snapshot_describes_each_function_by_its_file_body() -> None:
    snapshot, _ = committed_snapshot()
    described = {
        parts[1]: parts[4]
        for line in snapshot.splitlines()
        if (parts := line.split(" | "))[0] == "function"
    }
    assert described == {fn.name: _md5(fn.body) for fn in load_functions()}


# -- a database ------------------------------------------------------------------------------

pg = pytest.mark.postgres_only


@pg
async def test_a_migrated_database_has_exactly_the_files_functions(database_url: str) -> None:
    applied = await apply_schema(database_url)
    assert applied == Applied([m.version for m in load_migrations()], NAMES)
    assert await _drift(database_url) == []
    recorded = await _query(database_url, "SELECT name, sha256 FROM schema_functions ORDER BY 1")
    assert recorded == [(fn.name, fn.sha256) for fn in load_functions()]
    deployed = await _query(
        database_url, "SELECT proname, md5(prosrc) FROM pg_proc WHERE proname LIKE 'flowledger%' "
        "ORDER BY 1"
    )  # fmt: skip
    assert deployed == [(fn.name, _md5(fn.body)) for fn in load_functions()]
    assert await apply_schema(database_url) == Applied()


@pg
async def test_a_database_the_previous_release_migrated_is_brought_to_the_files(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = load_migrations()
    monkeypatch.setattr(migrate, "load_migrations", lambda: real[:10])
    assert await apply_schema(database_url) == Applied(list(range(1, 11)), [])
    before = await _query(database_url, "SELECT version, sha256 FROM schema_migrations")
    monkeypatch.undo()

    # 0001-0010 are byte for byte what that release applied: only 0011 and the files run.
    assert await apply_schema(database_url) == Applied([11], NAMES)
    after = await _query(database_url, "SELECT version, sha256 FROM schema_migrations")
    assert sorted(before) == sorted(after)[:10]
    assert await _dump(database_url) == committed_snapshot()[0]
    assert await _drift(database_url) == []
    privileges = await _query(
        database_url, "SELECT proname, has_function_privilege('flowledger_app', oid, 'EXECUTE'), "
        "has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc "
        "WHERE proname LIKE 'flowledger%' ORDER BY 1"
    )  # fmt: skip
    assert privileges == [(name, True, False) for name in NAMES]


@pg
async def test_a_changed_file_is_applied_again_keeping_the_grants(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = migrated_database_url
    real = load_functions()
    edited = [_edited(real[0], "changed"), real[1]]
    monkeypatch.setattr(migrate, "load_functions", lambda: edited)
    assert await apply_schema(url) == Applied([], [real[0].name])
    assert await apply_schema(url) == Applied()
    assert await _query(
        url, "SELECT md5(prosrc), has_function_privilege('flowledger_app', oid, 'EXECUTE'), "
        "has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc WHERE proname = %s",
        (real[0].name,),
    ) == [(_md5(edited[0].body), True, False)]  # fmt: skip
    # Against the shipped files, the database now differs, and says so; then it is put back.
    monkeypatch.undo()
    assert await _drift(url) == [
        f"function {real[0].name}'s body differs from store_service/sql/{real[0].filename}"
    ]
    assert await apply_schema(url) == Applied([], [real[0].name])
    assert await _drift(url) == []


@pg
async def test_concurrent_runners_apply_each_function_once(database_url: str) -> None:
    results = await asyncio.gather(*(apply_schema(database_url) for _ in range(4)))
    assert sorted(v for r in results for v in r.versions) == [m.version for m in load_migrations()]
    assert sorted(n for r in results for n in r.functions) == NAMES


@pg
async def test_a_function_outside_the_files_is_drift(migrated_database_url: str) -> None:
    url = migrated_database_url
    await _query(url, "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    await _query(url, "CREATE FUNCTION flowledger_create_flow(x int) RETURNS int LANGUAGE sql "
                      "AS 'SELECT 1'")  # fmt: skip
    assert await _drift(url) == [
        "function flowledger_create_flow has 2 signatures, functions/flowledger_create_flow.sql "
        "defines one: a migration should drop the others",
        "function sneaky is not defined in store_service/sql/functions/",
    ]


@pg
async def test_a_failing_function_file_names_itself_and_leaves_the_old_body(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = load_functions()
    sql = real[0].sql.replace("RETURNS TABLE (", "RETURNS TABLE (no_such_type_here nope, ", 1)
    broken = SqlFunction(real[0].name, sql, "f" * 64)
    monkeypatch.setattr(migrate, "load_functions", lambda: [broken, real[1]])
    with pytest.raises(MigrationError, match=f"migration {broken.filename} failed"):
        await apply_schema(migrated_database_url)
    monkeypatch.undo()
    assert await _drift(migrated_database_url) == []
    assert await apply_schema(migrated_database_url) == Applied()


@pg
async def test_a_database_a_newer_release_migrated_keeps_its_functions(
    migrated_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = migrated_database_url
    await _query(url, "INSERT INTO schema_migrations VALUES (99, 'newer', repeat('a', 64))")
    # As if that release had changed both functions: this older code does not put its back.
    await _query(url, "UPDATE schema_functions SET sha256 = repeat('b', 64)")
    with caplog.at_level(logging.WARNING):
        assert await apply_schema(url) == Applied()
    assert "0099_newer that this code does not know" in caplog.text
    assert await _query(url, "SELECT DISTINCT sha256 FROM schema_functions") == [("b" * 64,)]
