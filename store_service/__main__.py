"""``python -m store_service``: run the store service until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad setting (one line naming the variable),
1 when the service cannot start (address in use, database unreachable within the retry budget).
"""

from __future__ import annotations

import logging
import os
import sys

from flowledger.errors import FlowledgerError
from flowledger_core.server import BindError, shutdown_signals
from flowledger_core.server.runtime import metrics_url, run_service, stop_on_signal
from store_service.server import serve
from store_service.settings import StoreSettings

log = logging.getLogger("store_service")


async def run(settings: StoreSettings) -> None:
    async with shutdown_signals() as signals:
        server = await serve(settings)
        log.info(
            "store serving gRPC on %s (backend %s), metrics on %s",
            server.address, settings.backend,
            metrics_url(settings.metrics_listen, server.metrics_port),
        )
        await stop_on_signal(
            server, signals, log=log, in_flight="in-flight calls",
            grace=settings.shutdown_grace_seconds,
        )
        log.info("store stopped")


def main() -> int:
    return run_service(
        "store_service",
        lambda: StoreSettings.from_env(os.environ),
        run,
        log_level=lambda settings: settings.log_level,
        log=log,
        # FlowledgerError: the database stayed unreachable for the whole retry budget.
        start_errors=(BindError, FlowledgerError),
    )


if __name__ == "__main__":
    sys.exit(main())
