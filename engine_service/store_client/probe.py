"""Whether the store can be reached now: the engine's health follows it.

A replica whose store is unreachable can neither start nor run flows, so it answers health
NOT_SERVING (a load balancer then sends calls elsewhere) while it keeps retrying; it never exits.
The probe is the store's own grpc.health.v1 Check on a separate small channel, with a short
deadline: the store client's long retry budget is right for work, wrong for a health signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine_service import metrics
from engine_service.store_client.channel import STORE_SERVICE

log = logging.getLogger(__name__)

Listener = Callable[[bool], Awaitable[None]]


class StoreProbe:
    def __init__(
        self,
        address: str,
        interval: float,
        on_change: Listener,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """``credentials``/``options``: the store channel's TLS (the probe is a client too)."""
        self._interval = interval
        self._on_change = on_change
        opts = [
            # Notice a store that came back within about one probe interval.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", max(100, int(interval * 1000))),
            *options,
        ]
        self._channel = (
            grpc.aio.insecure_channel(address, options=opts)
            if credentials is None
            else grpc.aio.secure_channel(address, credentials, options=opts)
        )
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._up: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return bool(self._up)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flowledger-store-probe")

    async def check(self) -> bool:
        """One probe: True when the store answers SERVING within the deadline."""
        try:
            reply = await self._stub.Check(
                health_pb2.HealthCheckRequest(service=STORE_SERVICE),
                timeout=min(self._interval, 2.0),
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _loop(self) -> None:
        while True:
            up = await self.check()
            if up != self._up:
                if self._up is not None or not up:
                    log.log(logging.INFO if up else logging.WARNING,
                            "store is %s", "reachable again" if up else "unreachable")
                self._up = up
                metrics.STORE_UP.set(1 if up else 0)
                await self._on_change(up)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()
