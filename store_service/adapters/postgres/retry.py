"""Bounded retries of transient database failures with full-jitter exponential backoff.

Every database operation of the adapter runs through :func:`retrying`: serialization failures,
deadlocks and connection trouble are retried until the budget is spent (then Unavailable or
Aborted), everything else is translated once by :mod:`.sqlerrors`. Retrying a write is safe
because a failed transaction committed nothing and commands carry idempotent ids.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from flowledger.errors import FlowledgerError
from store_service.adapters.postgres import sqlerrors
from store_service.metrics import RETRIES

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``budget_s`` bounds the whole operation; delays double from ``base_s`` up to ``cap_s``."""

    budget_s: float = 15.0
    base_s: float = 0.02
    cap_s: float = 1.0

    def delay(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): uniform in [0, capped exponential], so retries
        # of many callers that failed together spread out instead of colliding again.
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


async def retrying(
    policy: RetryPolicy,
    op: Callable[[float], Awaitable[T]],
    *,
    on_connection_error: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Run ``op(deadline)`` until it succeeds, fails for good, or the budget is spent.

    ``deadline`` is a ``time.monotonic()`` instant that ``op`` should not wait past (e.g. for a
    pooled connection). Raises only flowledger errors.
    """
    deadline = time.monotonic() + policy.budget_s
    attempt = 0
    while True:
        try:
            return await op(deadline)
        except FlowledgerError:
            raise
        except Exception as exc:
            reason = sqlerrors.transient_reason(exc)
            if reason is None:
                raise sqlerrors.translate(exc) from exc
            delay = policy.delay(attempt)
            if time.monotonic() + delay >= deadline:
                log.warning("giving up after %d attempts (%s): %r", attempt + 1, reason, exc)
                raise sqlerrors.exhausted(reason, attempt + 1) from exc
            RETRIES.labels(reason).inc()
            log.info("retrying in %.3fs (%s, attempt %d): %r", delay, reason, attempt + 1, exc)
            if reason == "connection" and on_connection_error is not None:
                await on_connection_error()
            await asyncio.sleep(delay)
            attempt += 1
