"""``python -m store_service.migrate``: apply the store's pending migrations as the schema's owner.

The owner's connection string comes from ``STORE_MIGRATE_DATABASE_URL`` (the store serving as
the least-privileged ``flowledger_app`` role then keeps only ``DATABASE_URL``), else from
``DATABASE_URL`` (one role for both), or from ``--database-url``. It applies the numbered
migrations (``store_service/sql/migrations/``), then the SQL function files whose checksum changed
(``store_service/sql/functions/``). ``--check`` applies nothing and exits 1 when a migration or a
function is pending (a readiness gate for deployments that migrate by Job).

Exit codes: 0 done (or up to date), 1 pending (``--check``) or a migration failed, 2 bad usage.
The connection string is never printed: it may hold a password.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import psycopg

from flowledger.errors import FlowledgerError
from store_service.adapters.postgres.migrate import apply_schema, pending_files

log = logging.getLogger("store_service.migrate")


def owner_url(environ: Mapping[str, str]) -> str | None:
    """The connection string migrations run with: the owner's if set, else the store's."""
    for name in ("STORE_MIGRATE_DATABASE_URL", "DATABASE_URL"):
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m store_service.migrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database-url",
        help="the owner's connection string (default: $STORE_MIGRATE_DATABASE_URL, "
        "else $DATABASE_URL)",
    )
    parser.add_argument("--check", action="store_true", help="apply nothing; exit 1 if pending")
    # The former command line took the URL as its only positional argument.
    parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = args.database_url or args.url or owner_url(os.environ if environ is None else environ)
    if not url:
        parser.error("set STORE_MIGRATE_DATABASE_URL or DATABASE_URL, or give --database-url")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.check:
            missing = asyncio.run(pending_files(url))
            print(f"pending: {', '.join(missing)}" if missing else "up to date")
            return 1 if missing else 0
        applied = asyncio.run(apply_schema(url))
    except (FlowledgerError, psycopg.Error) as exc:
        print(f"migrations failed: {exc}", file=sys.stderr)
        return 1
    if applied.versions:
        print(f"applied: {applied.versions}")
    if applied.functions:
        print(f"functions: {', '.join(applied.functions)}")
    if not (applied.versions or applied.functions):
        print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
