"""The connection pool and the two ways the adapter uses it: one statement or one transaction.

Pooled connections are in autocommit mode, so a read is one round trip; writes open an explicit
transaction. Both run under :func:`.retry.retrying`, which takes a fresh connection per attempt.
The pool gauges are computed at scrape time from every open pool of the process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from store_service.adapters.postgres.retry import RetryPolicy, retrying
from store_service.adapters.postgres.sqlerrors import exhausted
from store_service.metrics import POOL_IN_USE, POOL_SIZE, POOL_WAITING

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]
Pool = psycopg_pool.AsyncConnectionPool[Conn]

_open_pools: set[Pool] = set()


def _pool_stat(key: str) -> Callable[[], float]:
    def value() -> float:
        total = 0
        for pool in list(_open_pools):
            stats: dict[str, Any] = pool.get_stats()
            size = int(stats.get("pool_size", 0))
            if key == "in_use":
                total += size - int(stats.get("pool_available", 0))
            elif key == "size":
                total += size
            else:
                total += int(stats.get("requests_waiting", 0))
        return float(total)

    return value


POOL_SIZE.set_function(_pool_stat("size"))
POOL_IN_USE.set_function(_pool_stat("in_use"))
POOL_WAITING.set_function(_pool_stat("waiting"))

# After a connection error, idle pooled connections are probably dead too (a restarted server):
# check them at most this often instead of failing once per dead connection.
_POOL_CHECK_INTERVAL_S = 1.0


class Database:
    """A pool plus the retry policy every operation runs under."""

    def __init__(self, pool: Pool, policy: RetryPolicy) -> None:
        self.pool = pool
        self.policy = policy
        self._last_check = 0.0

    @classmethod
    async def open(
        cls, conninfo: str, *, min_size: int, max_size: int, policy: RetryPolicy
    ) -> Database:
        pool: Pool = psycopg_pool.AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            name="flowledger-store",
            timeout=policy.budget_s,
            # The pool retries a lost connection with doubling delays (1 s, 2 s, 4 s, ... until
            # reconnect_timeout, default 5 min), so after a long outage its next attempt may come
            # minutes after the server is back. A short series, given up early, makes the next
            # request that waits for a connection start a fresh one at once instead.
            reconnect_timeout=max(1.0, min(5.0, policy.budget_s / 3)),
        )
        try:
            await pool.open(wait=True, timeout=policy.budget_s)
        except psycopg_pool.PoolTimeout as exc:
            await pool.close()
            raise exhausted("connection", 1) from exc
        _open_pools.add(pool)
        return cls(pool, policy)

    async def close(self) -> None:
        _open_pools.discard(self.pool)
        await self.pool.close()

    async def _check_pool(self) -> None:
        now = time.monotonic()
        if now - self._last_check >= _POOL_CHECK_INTERVAL_S:
            self._last_check = now
            await self.pool.check()

    async def run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` on a pooled autocommit connection, retried on transient failures."""

        async def attempt(deadline: float) -> T:
            async with self.pool.connection(timeout=_wait(deadline)) as conn:
                return await fn(conn)

        return await retrying(self.policy, attempt, on_connection_error=self._check_pool)

    async def transaction(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` inside one transaction (committed when it returns), retried as a whole."""

        async def attempt(deadline: float) -> T:
            async with (
                self.pool.connection(timeout=_wait(deadline)) as conn,
                conn.transaction(),
            ):
                return await fn(conn)

        return await retrying(self.policy, attempt, on_connection_error=self._check_pool)


def _wait(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())
