"""Bringing a database's schema to this code's: numbered migrations, then SQL function files.

``store_service/sql/migrations/NNNN_name.sql`` are forward-only migrations, applied once each in
version order. Each runs in its own transaction under ``pg_advisory_xact_lock``, so store
replicas starting together apply it exactly once (the others wait, then see it recorded).
``schema_migrations`` keeps each file's sha256: a file edited after it was applied stops
start-up with an error naming it, because the database no longer matches what the repository
says it is. A migration file must not contain its own BEGIN/COMMIT.

``store_service/sql/functions/<name>.sql`` hold the store's SQL functions, one each, as
``CREATE OR REPLACE FUNCTION <name>(...)`` with its grants: the one place a function's body is
written (decision 0027). They are repeatable: applied after the numbered migrations, each in a
transaction under the same lock, whenever the file's sha256 differs from the one recorded in
``schema_functions`` (migration 0011). Numbered migrations after 0010 may not create functions
(0003 to 0010 keep the bodies they applied, frozen); they drop a function's old signature when
its arguments change. A database that a newer release migrated (it has migrations this code
does not know) keeps its functions: an older replica does not put back older bodies.

A database that is up to date is recognised without a lock or any DDL (one SELECT of each
version table), so a store serving as the least-privileged ``flowledger_app`` role (migration
0005) starts on a database its owner migrated; applying anything needs the owner.

Command line (the migration Job): ``python -m store_service.migrate`` (see there); the former
``python -m store_service.adapters.postgres.migrate URL`` is this package's ``__main__``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg

from flowledger.errors import InternalError
from store_service.adapters.postgres.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# Any fixed 64-bit key; it only has to be the same for every replica of the store.
_LOCK_KEY = 0x666C_6F77_6C65_6467  # "flowledg"
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_FUNCTION_FILE = re.compile(r"([a-z][a-z0-9_]*)\.sql")
# The last numbered migration that defines functions; later ones leave that to sql/functions/.
LAST_MIGRATION_WITH_FUNCTIONS = 10
_CREATES_ROUTINE = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+([A-Za-z_][A-Za-z0-9_.]*)", re.I
)
_LINE_COMMENT = re.compile(r"--[^\n]*")
# A function's body as Postgres keeps it (pg_proc.prosrc): the text between its dollar quotes.
_BODY = re.compile(r"\bAS\s+(\$[A-Za-z_]*\$)(.*?)\1", re.S)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL CHECK (length(sha256) = 64),
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(InternalError):
    """The database's migrations cannot be brought in line with this code (start-up only)."""

    default_reason = "MIGRATION_FAILED"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class SqlFunction:
    """``sql/functions/<name>.sql``: one function's ``CREATE OR REPLACE`` and its grants."""

    name: str
    sql: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"functions/{self.name}.sql"

    @property
    def body(self) -> str:
        """The function's source as ``pg_proc.prosrc`` holds it once applied."""
        m = _BODY.search(self.sql)
        assert m is not None  # load_functions() checked it
        return m[2]


@dataclass
class Applied:
    """What one run applied: migration versions, then function names (both empty: up to date)."""

    versions: list[int] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def _sql_dir(kind: str) -> Traversable:
    return resources.files("store_service").joinpath("sql", kind)


def _routines(sql: str) -> list[str]:
    """The names of the functions and procedures a file creates (comments ignored)."""
    return _CREATES_ROUTINE.findall(_LINE_COMMENT.sub("", sql))


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The numbered migration files shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in (directory or _sql_dir("migrations")).iterdir():
        m = _MIGRATION_FILE.fullmatch(entry.name)
        if m is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name} is not named NNNN_name.sql")
            continue
        data = entry.read_bytes()
        mig = Migration(int(m[1]), m[2], data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        if mig.version > LAST_MIGRATION_WITH_FUNCTIONS and (names := _routines(mig.sql)):
            raise MigrationError(
                f"migration {mig.filename} creates {', '.join(names)}: functions are defined "
                "once, in store_service/sql/functions/<name>.sql (decision 0027)"
            )
        found.append(mig)
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def load_functions(directory: Traversable | None = None) -> list[SqlFunction]:
    """The function files shipped with the package, in name order (the order they apply in)."""
    found: list[SqlFunction] = []
    for entry in (directory or _sql_dir("functions")).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _FUNCTION_FILE.fullmatch(entry.name)
        if m is None:
            raise MigrationError(f"function file {entry.name} is not named <function>.sql")
        data = entry.read_bytes()
        fn = SqlFunction(m[1], data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        creates = _routines(fn.sql)
        replaces = re.search(
            rf"\bCREATE\s+OR\s+REPLACE\s+FUNCTION\s+{fn.name}\s*\(", fn.sql, re.I
        )
        if creates != [fn.name] or replaces is None or _BODY.search(fn.sql) is None:
            raise MigrationError(
                f"function file {fn.filename} must create exactly one function, {fn.name}, "
                "as CREATE OR REPLACE FUNCTION with a dollar-quoted body (it may run again)"
            )
        found.append(fn)
    found.sort(key=lambda fn: fn.name)
    return found


async def apply_schema(conninfo: str, *, retry_budget_s: float = 15.0) -> Applied:
    """Apply the pending migrations, then the changed function files."""
    migrations = load_migrations()
    functions = load_functions()
    applied = Applied()

    async def run(deadline: float) -> Applied:
        timeout = max(1, int(deadline - time.monotonic()))
        async with await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=min(timeout, 10)
        ) as conn:
            try:
                if await _up_to_date(conn, migrations, functions):
                    return applied
                for mig in migrations:
                    if await _apply_one(conn, mig, migrations):
                        applied.versions.append(mig.version)
                for fn in functions:
                    if await _apply_function(conn, fn, migrations):
                        applied.functions.append(fn.name)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _not_owner(exc, await _pending(conn, migrations, functions)) from exc
        return applied

    # Connection trouble at start-up (the database is still coming up) is retried like any
    # other; the files already applied are skipped on the next attempt.
    return await retrying(RetryPolicy(budget_s=retry_budget_s), run)


async def apply_migrations(conninfo: str, *, retry_budget_s: float = 15.0) -> list[int]:
    """:func:`apply_schema`, returning the migration versions applied now (empty: up to date)."""
    return (await apply_schema(conninfo, retry_budget_s=retry_budget_s)).versions


async def pending_files(conninfo: str) -> list[str]:
    """The files a run would apply now (reads only; any role that may read the version tables)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        return await _pending(conn, load_migrations(), load_functions())


async def _pending(
    conn: Conn, migrations: list[Migration], functions: list[SqlFunction]
) -> list[str]:
    versions = await _recorded_versions(conn)
    done = set(versions or {})
    missing = [mig.filename for mig in migrations if mig.version not in done]
    stale = await _stale_functions(conn, versions or {}, migrations, functions)
    return missing + [fn.filename for fn in stale]


async def _exists(conn: Conn, table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cur.fetchone()
    return row is not None and bool(row[0])


async def _recorded_versions(conn: Conn) -> dict[int, tuple[str, str]] | None:
    """``schema_migrations`` as {version: (name, sha256)}; None before the first migration."""
    if not await _exists(conn, "schema_migrations"):
        return None
    cur = await conn.execute("SELECT version, name, sha256 FROM schema_migrations")
    return {v: (n, s) for v, n, s in await cur.fetchall()}


async def _stale_functions(
    conn: Conn,
    versions: dict[int, tuple[str, str]],
    migrations: list[Migration],
    functions: list[SqlFunction],
) -> list[SqlFunction]:
    """The function files whose checksum differs from the one recorded.

    None are while the database has no ``schema_functions`` (only a test stopping at an older
    migration gets there), or when it has migrations this code does not know (a newer release
    migrated it, and its bodies belong to that release's tables).
    """
    known = {mig.version for mig in migrations}
    if not await _exists(conn, "schema_functions") or not set(versions) <= known:
        return []
    cur = await conn.execute("SELECT name, sha256 FROM schema_functions")
    recorded = {name: sha for name, sha in await cur.fetchall()}
    return [fn for fn in functions if recorded.get(fn.name) != fn.sha256]


async def _up_to_date(
    conn: Conn, migrations: list[Migration], functions: list[SqlFunction]
) -> bool:
    """Whether every migration is recorded (and unedited) and every function current.

    Reads only, takes no lock."""
    versions = await _recorded_versions(conn)
    if versions is None:
        return False
    _verify(versions, migrations)
    if not all(mig.version in versions for mig in migrations):
        return False
    return not await _stale_functions(conn, versions, migrations, functions)


def _not_owner(exc: psycopg.Error, pending: list[str]) -> MigrationError:
    user = exc.pgconn.user.decode(errors="replace") if exc.pgconn is not None else "?"
    return MigrationError(
        f"the database role {user!r} may not apply the pending migrations "
        f"({', '.join(pending)}): {exc.diag.message_primary}. Apply them as the schema's owner: "
        "set STORE_MIGRATE_DATABASE_URL, or run `python -m store_service.migrate` with it"
    )


async def _apply_one(conn: Conn, mig: Migration, all_: list[Migration]) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(_CREATE_TABLE)
        versions = await _recorded_versions(conn) or {}
        _verify(versions, all_)
        if mig.version in versions:
            return False
        await _execute_file(conn, mig)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
            (mig.version, mig.name, mig.sha256),
        )
        log.info("applied migration %s", mig.filename)
        return True


async def _apply_function(conn: Conn, fn: SqlFunction, migrations: list[Migration]) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        versions = await _recorded_versions(conn) or {}
        if fn not in await _stale_functions(conn, versions, migrations, [fn]):
            return False
        await _execute_file(conn, fn)
        await conn.execute(
            "INSERT INTO schema_functions (name, sha256) VALUES (%s, %s) ON CONFLICT (name) "
            "DO UPDATE SET sha256 = excluded.sha256, applied_at = now()",
            (fn.name, fn.sha256),
        )
        log.info("applied function %s", fn.filename)
        return True


async def _execute_file(conn: Conn, mig: Migration | SqlFunction) -> None:
    try:
        await conn.execute(mig.sql.encode())  # no parameters: several statements per file
    except psycopg.Error as exc:
        if exc.sqlstate and exc.sqlstate[:2] in ("08", "40", "57"):
            raise  # transient: retried by the caller
        if isinstance(mig, SqlFunction) and isinstance(
            exc, psycopg.errors.InsufficientPrivilege
        ):
            raise  # only its owner may replace a function: the caller says how to apply it
        raise MigrationError(f"migration {mig.filename} failed: {exc}") from exc


def _verify(recorded: dict[int, tuple[str, str]], migrations: list[Migration]) -> None:
    known = {mig.version: mig for mig in migrations}
    for version, (name, sha) in sorted(recorded.items()):
        mig = known.get(version)
        if mig is None:
            # A newer release migrated this database: keep running (migrations are additive),
            # but say so.
            log.warning(
                "database has migration %04d_%s that this code does not know; its SQL "
                "functions are left as that release applied them", version, name
            )
        elif mig.sha256 != sha:
            raise MigrationError(
                f"migration {mig.filename} was changed after it was applied "
                f"(recorded sha256 {sha}, file {mig.sha256}); applied migrations are immutable: "
                "restore the file and put the change in a new migration"
            )
