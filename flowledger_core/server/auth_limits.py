"""Requests per second per authenticated subject: a token bucket each, RESOURCE_EXHAUSTED past it.

Buckets are keyed by subject (not by token string), so one caller holding several tokens shares
one budget. Memory is bounded: past :data:`MAX_BUCKETS` subjects, buckets that have refilled
(idle callers) are dropped, which changes nothing for them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flowledger.errors import ResourceExhausted
from flowledger_core.server.auth_settings import RateLimit

__all__ = ["MAX_BUCKETS", "RateLimiter"]

MAX_BUCKETS = 10_000


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        # subject -> (tokens left, when counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, subject: str) -> None:
        """Spend one token of ``subject``'s bucket, or raise RESOURCE_EXHAUSTED."""
        now = self._clock()
        rate, burst = self.limit.per_second, float(self.limit.burst)
        tokens, then = self._buckets.get(subject, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[subject] = (tokens, now)
            wait_ms = math.ceil((1.0 - tokens) / rate * 1000)
            raise ResourceExhausted(
                f"{subject} is over its request rate ({rate:g}/s, bursts of "
                f"{self.limit.burst}): retry in {wait_ms} ms",
                reason="RATE_LIMITED",
                metadata={"retry_after_ms": str(wait_ms)},
            )
        self._buckets[subject] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._prune(now)

    def _prune(self, now: float) -> None:
        rate, burst = self.limit.per_second, float(self.limit.burst)
        self._buckets = {
            s: (t, w) for s, (t, w) in self._buckets.items() if t + (now - w) * rate < burst
        }
