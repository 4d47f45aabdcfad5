"""The request limits the store enforces, as the engine learns them: asked once (GetLimits).

The engine validates every request against the store's configured limits (its STORE_MAX_*
settings), so that it refuses what the store would refuse, naming the fields of its own request
(``input_json``, not the store call's ``initial_append.artifacts[0].payload_json``). Start-up is
unchanged: :func:`engine_service.server.serve` starts asking and returns at once, so a replica
whose store is unreachable still binds, answers health NOT_SERVING and keeps retrying. A request
that arrives before the store answered waits for that answer as a store call waits for the store:
the call is :meth:`GrpcEventStore.get_limits`, retried with the store client's deadlines and
budget (:mod:`engine_service.store_client.retry`), and when the budget runs out the request fails
UNAVAILABLE and the next request asks again. Once known the limits are kept for the life of the
replica: a store's limits are settings, changed only by restarting it (and its replicas alike).

A store older than GetLimits (UNIMPLEMENTED) has no way to say: the engine then validates with
the defaults of :mod:`flowledger_core.limits`, as it always did, and says so once in the log.
"""

from __future__ import annotations

import asyncio
import logging

from engine_service.store_client.client import GrpcEventStore
from flowledger_core.limits import Limits

log = logging.getLogger(__name__)


class StoreLimits:
    """The store's limits, fetched once through ``client``; concurrent askers share one call."""

    def __init__(self, client: GrpcEventStore) -> None:
        self._client = client
        self._known: Limits | None = None
        self._asking: asyncio.Task[Limits] | None = None

    @property
    def known(self) -> Limits | None:
        """The limits, once the store answered; None before."""
        return self._known

    def start(self) -> None:
        """Start asking now (at start-up), so that the first request does not wait for it."""
        self._ask()

    async def get(self) -> Limits:
        """The store's limits: at once when known, else after the (shared) GetLimits call;
        its error when that call fails (a later call asks again)."""
        if self._known is not None:
            return self._known
        # Shielded: a request that gives up (cancelled) does not cancel the others' call.
        return await asyncio.shield(self._ask())

    async def close(self) -> None:
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()
            await asyncio.gather(self._asking, return_exceptions=True)

    def _ask(self) -> asyncio.Task[Limits]:
        if self._asking is None or (self._asking.done() and self._known is None):
            self._asking = asyncio.create_task(self._fetch(), name="flowledger-store-limits")
            self._asking.add_done_callback(_retrieved)
        return self._asking

    async def _fetch(self) -> Limits:
        limits = await self._client.get_limits()
        if limits is None:
            log.warning(
                "the store does not serve GetLimits (an older release): requests are checked "
                "against the default limits"
            )
            limits = Limits()
        else:
            log.info("the store's limits: %s", limits)
        self._known = limits
        return limits


def _retrieved(task: asyncio.Task[Limits]) -> None:
    """Mark a failed fetch's error as seen: the requests that waited for it got it, and a fetch
    started at start-up that nobody waited for must not be reported as an unhandled error."""
    if not task.cancelled():
        task.exception()
