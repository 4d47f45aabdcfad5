"""What both benchmarks share: the Postgres to measure on, and CPU accounting by process."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import psycopg

from flowledger_core.server.event_loop import VARIABLE, default_loop

T = TypeVar("T")


def client_loop() -> str:
    """The event loop the bench's gRPC clients run on: the services' (``FLOWLEDGER_EVENT_LOOP``,
    default uvloop), since the store's clients are engine replicas, which run on it."""
    return os.environ.get(VARIABLE, "") or default_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`client_loop`."""
    if client_loop() == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process used so far; None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(admin_url: str) -> Callable[[], float | None]:
    """CPU seconds of the Postgres server's processes (its postmaster and every child)."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        with open(f"/proc/{row[0] if row else 0}/stat") as f:
            comm, _, rest = f.read().partition(") ")
        postmaster = int(rest.split()[1])
    except (OSError, IndexError, ValueError):
        return lambda: None
    if not comm.endswith("(postgres"):
        return lambda: None  # a server on another machine: its pid means nothing here

    def total() -> float | None:
        seconds = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(entry) == postmaster or int(fields[1]) == postmaster:
                seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return seconds

    return total


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """The admin URL of the Postgres to measure on."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from flowctl.devserver.postgres import LocalPostgres

    with LocalPostgres() as pg:
        yield pg.admin_url


def fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)
