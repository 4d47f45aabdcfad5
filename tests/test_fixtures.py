"""The shared fixtures do what other tests rely on: fresh databases, restarts, a fault proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.fixtures.postgres import PgServer, fresh_database
from tests.fixtures.tcp_proxy import ProxyFactory, TcpProxy

DEADLINE = 10.0


def _dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def _public_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def _exists(server: PgServer, dbname: str) -> bool:
    with psycopg.connect(server.admin_url) as conn:
        cur = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname])
        return cur.fetchone() is not None


async def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


def test_database_url_is_fresh_and_empty(database_url: str, pg_server: PgServer) -> None:
    assert _public_tables(database_url) == []
    assert _dbname(database_url) != "postgres"
    assert _exists(pg_server, _dbname(database_url))


def test_fresh_databases_are_isolated_and_dropped_despite_open_connections(
    pg_server: PgServer,
) -> None:
    with fresh_database(pg_server) as first, fresh_database(pg_server) as second:
        assert first != second
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_first (x int)")
        assert _public_tables(first) == ["only_in_first"]
        assert _public_tables(second) == []
        lingering = psycopg.connect(first)  # still open when the database is dropped
    try:
        assert not _exists(pg_server, _dbname(first))
        assert not _exists(pg_server, _dbname(second))
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    finally:
        lingering.close()


def test_migrated_database_has_the_schema_and_no_rows(
    migrated_database_url: str, database_url: str
) -> None:
    assert "event_log" in _public_tables(migrated_database_url)
    assert "event_log" not in _public_tables(database_url)
    with psycopg.connect(migrated_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM event_log").fetchone() == (0,)


def test_restart_keeps_committed_data_and_drops_connections(
    pg_server: PgServer, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
        pg_server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_server_urls_keep_credentials_and_options() -> None:
    server = PgServer("postgresql://u%40x:p%2Fw@db.example:5433/app?sslmode=disable")
    url = server.url("other db")
    assert url == "postgresql://u%40x:p%2Fw@db.example:5433/other%20db?sslmode=disable"
    assert conninfo_to_dict(url) == {
        "user": "u@x",
        "password": "p/w",
        "host": "db.example",
        "port": "5433",
        "dbname": "other db",
        "sslmode": "disable",
    }
    assert (server.host, server.port) == ("db.example", 5433)


def test_proxy_url_for_rewrites_only_host_and_port() -> None:
    proxy = TcpProxy("db.example", 5432)
    proxy.port = 6000
    url = proxy.url_for("postgresql://u:p@db.example:5432/app?sslmode=disable")
    assert url == "postgresql://u:p@127.0.0.1:6000/app?sslmode=disable"
    keywords = conninfo_to_dict(proxy.url_for("host=db.example port=5432 dbname=app"))
    assert keywords == {"host": "127.0.0.1", "port": "6000", "dbname": "app"}


async def test_proxy_reset_drops_a_live_connection(
    tcp_proxy: ProxyFactory, pg_server: PgServer, database_url: str
) -> None:
    async with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        url = proxy.url_for(database_url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            await proxy.reset_all()
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
        # The proxy itself keeps serving new connections.
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT 2")
            assert await cur.fetchone() == (2,)


async def test_proxy_blackhole_stalls_traffic_until_reset(
    tcp_proxy: ProxyFactory, pg_server: PgServer, database_url: str
) -> None:
    async with tcp_proxy(pg_server.host, pg_server.port) as proxy:
        url = proxy.url_for(database_url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            proxy.blackhole(True)
            query = asyncio.create_task(conn.execute("SELECT 1"))
            await _wait_until(lambda: proxy.dropped_bytes > 0)
            connect = asyncio.create_task(psycopg.AsyncConnection.connect(url))
            await _wait_until(lambda: proxy.accepted == 2)
            # Bytes were eaten, so neither can have completed: no timing involved.
            assert not query.done()
            assert not connect.done()
            proxy.blackhole(False)
            await proxy.reset_all()
            with pytest.raises(psycopg.OperationalError):
                await query
            with pytest.raises(psycopg.OperationalError):
                await connect
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT 3")
            assert await cur.fetchone() == (3,)
