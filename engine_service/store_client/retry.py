"""How the engine waits for the store: deadlines, the retry budget and jittered backoff.

Only transient failures are retried (:func:`is_transient`): ``Unavailable`` (the store or its
database is unreachable, the connection dropped, or the server cancelled the call while shutting
down) and ``DeadlineExceeded`` (an attempt outlived its deadline). Every other error, in particular
``VersionConflict``, is the caller's to handle. Retrying a write is safe because every write
carries a command id or a client-chosen flow id, so a repeat is answered, not re-applied.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowledger.errors import DeadlineExceeded, FlowledgerError, Unavailable

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class StoreClientSettings:
    """Timing and sizing of :class:`engine_service.store_client.client.GrpcEventStore`."""

    # Deadline of one attempt of a unary call, and the longest ReadEvents may go without
    # delivering a message (the idle deadline of a read stream).
    call_timeout: float = 10.0
    # Total time one call may spend on attempts and backoff before ``Unavailable`` is raised.
    # For streams it bounds one outage: it restarts once the stream works again.
    retry_budget: float = 30.0
    # Backoff between attempts: full jitter over initial * multiplier**n, capped at max.
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0
    # The channel's own reconnect backoff cap (gRPC's default is 120 s, far past the budget:
    # a store that comes back would not be noticed before the budget ran out).
    max_reconnect_backoff: float = 2.0
    # HTTP/2 keepalive pings: how a Subscribe stream that receives nothing notices a dead peer.
    # Servers refuse pings more frequent than every 5 minutes by default (GOAWAY
    # "too_many_pings"), hence just over that; lower it together with the server's
    # grpc.http2.min_recv_ping_interval_without_data_ms. None disables keepalive.
    keepalive_time: float | None = 330.0
    keepalive_timeout: float = 20.0
    max_receive_message_bytes: int = 64 * MIB
    max_send_message_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        positive = {
            "call_timeout": self.call_timeout,
            "retry_budget": self.retry_budget,
            "initial_backoff": self.initial_backoff,
            "max_backoff": self.max_backoff,
            "max_reconnect_backoff": self.max_reconnect_backoff,
            "keepalive_timeout": self.keepalive_timeout,
            "keepalive_time": self.keepalive_time if self.keepalive_time is not None else 1.0,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")
        if self.max_receive_message_bytes < 1 or self.max_send_message_bytes < 1:
            raise ValueError(
                "max_receive_message_bytes and max_send_message_bytes must be positive"
            )


def is_transient(error: FlowledgerError) -> bool:
    """Whether repeating the same call may succeed (``from_rpc_error`` maps a server-side
    CANCELLED, e.g. a shutting-down store, to ``Unavailable`` too)."""
    return isinstance(error, Unavailable | DeadlineExceeded)


class RetryBudget:
    """The time left for one call (or one outage of a stream), and the backoff between attempts.

    ``clock`` and ``rng`` are injectable so that the arithmetic can be tested without sleeping.
    """

    def __init__(
        self,
        settings: StoreClientSettings,
        *,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._what = what
        self._clock = clock
        self._rng = rng
        self._deadline = clock() + settings.retry_budget
        self._failures = 0

    @property
    def failures(self) -> int:
        """Transient failures since the start (or the last :meth:`reset`)."""
        return self._failures

    def remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def attempt_timeout(self) -> float:
        """Deadline of the next attempt: the call timeout, unless less budget is left."""
        return min(self._settings.call_timeout, self.remaining())

    def reset(self) -> None:
        """The call works again (a stream delivered): the next outage gets a whole budget."""
        self._deadline = self._clock() + self._settings.retry_budget
        self._failures = 0

    def next_delay(self) -> float:
        """Full jitter: uniform in [0, min(max, initial * multiplier**failures))."""
        s = self._settings
        ceiling = min(s.max_backoff, s.initial_backoff * s.backoff_multiplier**self._failures)
        return ceiling * self._rng()

    async def backoff(self, error: FlowledgerError) -> None:
        """Wait before the next attempt after the transient ``error``; raise ``Unavailable``
        (chained to ``error``) when the budget cannot cover the wait and one more attempt."""
        delay = self.next_delay()
        self._failures += 1
        if delay >= self.remaining():
            raise self.exhausted(error) from error
        log.debug("%s: %s (attempt %d), retrying in %.3fs",
                  self._what, error.message, self._failures, delay)
        await asyncio.sleep(delay)

    def exhausted(self, error: FlowledgerError) -> Unavailable:
        """The error raised when the budget is spent; it keeps the last error's reason when
        that was ``Unavailable`` (a deadline past the budget is unavailability too)."""
        reason = error.reason if isinstance(error, Unavailable) else Unavailable.default_reason
        return Unavailable(
            f"{self._what}: the store did not answer within the retry budget of "
            f"{self._settings.retry_budget:g}s ({self._failures} failed attempts); "
            f"last error: {error.message}",
            reason=reason,
            metadata={**error.metadata, "attempts": str(self._failures),
                      "last_code": error.code.value},
        )
