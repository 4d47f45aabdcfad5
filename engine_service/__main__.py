"""``python -m engine_service``: run an engine replica until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad setting (one line naming the variable), 1 when
the service cannot start (address in use). An unreachable store is not a reason to exit: the
replica answers health NOT_SERVING and keeps retrying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from engine_service.plugins import build_registry
from engine_service.registry import StepRegistry
from engine_service.server import serve
from engine_service.settings import ServiceSettings, SettingsError
from flowledger.server import BindError, shutdown_signals

log = logging.getLogger("engine_service")


async def run(settings: ServiceSettings, registry: StepRegistry) -> None:
    async with shutdown_signals() as signals:
        server = await serve(settings, registry=registry)
        metrics = (
            f"http://{settings.metrics_listen.rpartition(':')[0]}:{server.metrics_port}/metrics"
            if server.metrics_port is not None
            else "off"
        )
        log.info(
            "engine %s serving gRPC on %s (store %s), metrics on %s",
            settings.engine_id, server.address, settings.store_addr, metrics,
        )
        await signals.first.wait()
        log.info(
            "received %s: draining, in-flight steps and calls get %.1fs",
            signals.signal.name if signals.signal else "signal", settings.shutdown_grace_seconds,
        )
        stopping = asyncio.ensure_future(server.stop())
        again = asyncio.ensure_future(signals.again.wait())
        await asyncio.wait((stopping, again), return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            await server.stop(0)  # shortens the first stop's grace
        again.cancel()
        await stopping
        log.info("engine stopped")


def main() -> int:
    try:
        settings = ServiceSettings.from_env(os.environ)
        # Step plugins are settings too: a module that cannot be loaded stops the start here.
        registry = build_registry(settings.step_plugins)
    except SettingsError as exc:
        print(f"engine_service: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(run(settings, registry))
    except BindError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
