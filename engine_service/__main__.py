"""``python -m engine_service``: run an engine replica until SIGTERM/SIGINT.

Exit codes: 0 after a graceful stop, 2 for a bad setting (one line naming the variable), 1 when
the service cannot start (address in use). An unreachable store is not a reason to exit: the
replica answers health NOT_SERVING and keeps retrying.
"""

from __future__ import annotations

import logging
import os
import sys

from engine_service.server import serve
from engine_service.settings import ServiceSettings
from engine_service.steps.plugins import build_registry
from engine_service.steps.registry import StepRegistry
from flowledger_core.server import shutdown_signals
from flowledger_core.server.runtime import metrics_url, run_service, stop_on_signal

log = logging.getLogger("engine_service")


async def run(settings: ServiceSettings, registry: StepRegistry) -> None:
    async with shutdown_signals() as signals:
        server = await serve(settings, registry=registry)
        log.info(
            "engine %s serving gRPC on %s (store %s), metrics on %s",
            settings.engine_id, server.address, settings.store_addr,
            metrics_url(settings.metrics_listen, server.metrics_port),
        )
        await stop_on_signal(
            server, signals, log=log, in_flight="in-flight steps and calls",
            grace=settings.shutdown_grace_seconds,
        )
        log.info("engine stopped")


def _load() -> tuple[ServiceSettings, StepRegistry]:
    settings = ServiceSettings.from_env(os.environ)
    # Step plugins are settings too: a module that cannot be loaded stops the start here. The
    # HTTP runners are bound to ENGINE_EGRESS_ALLOW's policy (with the replica's own ports).
    return settings, build_registry(settings.step_plugins, settings.egress_policy())


def main() -> int:
    return run_service(
        "engine_service",
        _load,
        lambda loaded: run(*loaded),
        log_level=lambda loaded: loaded[0].log_level,
        log=log,
    )


if __name__ == "__main__":
    sys.exit(main())
