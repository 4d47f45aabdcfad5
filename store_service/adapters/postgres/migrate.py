"""Forward-only SQL migrations: ``store_service/migrations/NNNN_name.sql`` and a version table.

Each file runs in its own transaction under ``pg_advisory_xact_lock``, so store replicas starting
together apply it exactly once (the others wait, then see it recorded). ``schema_migrations``
keeps each file's sha256: a file edited after it was applied stops start-up with an error naming
it, because the database no longer matches what the repository says it is. A migration file
must not contain its own BEGIN/COMMIT.

A database that is up to date is recognised without a lock or any DDL (one SELECT of
``schema_migrations``), so a store serving as the least-privileged ``flowledger_app`` role
(migration 0005) starts on a database its owner migrated; applying a migration needs the owner.

Command line (the migration Job): ``python -m store_service.migrate`` (see there).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from flowledger.errors import InternalError
from store_service.adapters.postgres.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

# Any fixed 64-bit key; it only has to be the same for every replica of the store.
_LOCK_KEY = 0x666C_6F77_6C65_6467  # "flowledg"
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

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


def load_migrations() -> list[Migration]:
    """The migration files shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("store_service").joinpath("migrations").iterdir():
        m = _FILE.fullmatch(entry.name)
        if m is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name} is not named NNNN_name.sql")
            continue
        data = entry.read_bytes()
        found.append(
            Migration(int(m[1]), m[2], data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        )
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


async def apply_migrations(conninfo: str, *, retry_budget_s: float = 15.0) -> list[int]:
    """Apply the pending migrations; returns the versions applied now (empty: up to date)."""
    migrations = load_migrations()
    applied: list[int] = []

    async def run(deadline: float) -> list[int]:
        timeout = max(1, int(deadline - time.monotonic()))
        async with await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=min(timeout, 10)
        ) as conn:
            try:
                if await _up_to_date(conn, migrations):
                    return applied
                for mig in migrations:
                    if await _apply_one(conn, mig, migrations):
                        applied.append(mig.version)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _not_owner(exc, migrations, applied) from exc
        return applied

    # Connection trouble at start-up (the database is still coming up) is retried like any
    # other; the files already applied are skipped on the next attempt.
    return await retrying(RetryPolicy(budget_s=retry_budget_s), run)


async def _up_to_date(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], migrations: list[Migration]
) -> bool:
    """Whether every migration is recorded (and unedited); reads only, takes no lock."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return False
    cur = await conn.execute("SELECT version, name, sha256 FROM schema_migrations")
    recorded = {v: (n, s) for v, n, s in await cur.fetchall()}
    _verify(recorded, migrations)
    return all(mig.version in recorded for mig in migrations)


def _not_owner(
    exc: psycopg.Error, migrations: list[Migration], applied: list[int]
) -> MigrationError:
    done = set(applied)
    pending = [mig.filename for mig in migrations if mig.version not in done]
    user = exc.pgconn.user.decode(errors="replace") if exc.pgconn is not None else "?"
    return MigrationError(
        f"the database role {user!r} may not apply the pending migrations "
        f"({', '.join(pending)}): {exc.diag.message_primary}. Apply them as the schema's owner: "
        "set STORE_MIGRATE_DATABASE_URL, or run `python -m store_service.migrate` with it"
    )


async def _apply_one(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], mig: Migration, all_: list[Migration]
) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(_CREATE_TABLE)
        cur = await conn.execute("SELECT version, name, sha256 FROM schema_migrations")
        recorded = {v: (n, s) for v, n, s in await cur.fetchall()}
        _verify(recorded, all_)
        if mig.version in recorded:
            return False
        try:
            await conn.execute(mig.sql.encode())  # no parameters: several statements per file
        except psycopg.Error as exc:
            if exc.sqlstate and exc.sqlstate[:2] in ("08", "40", "57"):
                raise  # transient: retried by the caller
            raise MigrationError(f"migration {mig.filename} failed: {exc}") from exc
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
            (mig.version, mig.name, mig.sha256),
        )
        log.info("applied migration %s", mig.filename)
        return True


def _verify(recorded: dict[int, tuple[str, str]], migrations: list[Migration]) -> None:
    known = {mig.version: mig for mig in migrations}
    for version, (name, sha) in sorted(recorded.items()):
        mig = known.get(version)
        if mig is None:
            # A newer release migrated this database: keep running (migrations are additive),
            # but say so.
            log.warning(
                "database has migration %04d_%s that this code does not know", version, name
            )
        elif mig.sha256 != sha:
            raise MigrationError(
                f"migration {mig.filename} was changed after it was applied "
                f"(recorded sha256 {sha}, file {mig.sha256}); applied migrations are immutable: "
                "restore the file and put the change in a new migration"
            )


def main(argv: list[str]) -> int:
    """The former command line, kept for existing Jobs: ``python -m store_service.migrate``."""
    from store_service.migrate import main as migrate_main

    return migrate_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
