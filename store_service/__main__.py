"""``python -m store_service``: run the store service until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad setting (one line naming the variable),
1 when the service cannot start (address in use, database unreachable within the retry budget).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from flowledger.errors import FlowledgerError
from flowledger.server import BindError, shutdown_signals
from store_service.server import serve
from store_service.settings import SettingsError, StoreSettings

log = logging.getLogger("store_service")


async def run(settings: StoreSettings) -> None:
    async with shutdown_signals() as signals:
        server = await serve(settings)
        metrics = (
            f"http://{settings.metrics_listen.rpartition(':')[0]}:{server.metrics_port}/metrics"
            if server.metrics_port is not None
            else "off"
        )
        log.info(
            "store serving gRPC on %s (backend %s), metrics on %s",
            server.address, settings.backend, metrics,
        )
        await signals.first.wait()
        log.info(
            "received %s: draining, in-flight calls get %.1fs",
            signals.signal.name if signals.signal else "signal", settings.shutdown_grace_seconds,
        )
        stopping = asyncio.ensure_future(server.stop())
        again = asyncio.ensure_future(signals.again.wait())
        await asyncio.wait((stopping, again), return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            await server.stop(0)  # shortens the first stop's grace
        again.cancel()
        await stopping
        log.info("store stopped")


def main() -> int:
    try:
        settings = StoreSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"store_service: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(run(settings))
    except BindError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except FlowledgerError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
