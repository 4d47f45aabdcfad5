"""``flowctl up``: Postgres, the store and the engine on this machine until Ctrl-C."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

import click

from flowctl._app import settings
from flowctl.devserver.services import data_home, postgres, services

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def _loopback_only(option: str, address: str) -> str:
    host = address.rpartition(":")[0]
    if host not in _LOOPBACK:
        # Plaintext, unauthenticated gRPC: never offer it beyond this machine.
        raise click.BadParameter(f"{address!r} is not a loopback address", param_hint=option)
    return address


def _stop_on_signals() -> None:
    """SIGTERM behaves like Ctrl-C; after the first, both are ignored so that the clean-up
    (engine, store, then Postgres) is not itself interrupted."""

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@click.command()
@click.option("--fresh", is_flag=True, help="Start with an empty database (deletes the data).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Postgres data directory [default: ~/.local/share/flowledger/pg].",
)
@click.option("--engine-listen", default=None, help="Engine address [default: --engine].")
@click.option("--store-listen", default="127.0.0.1:50051", show_default=True)
@click.option("--engine-metrics", default="127.0.0.1:9465", show_default=True)
@click.option("--store-metrics", default="127.0.0.1:9464", show_default=True)
@click.option("--log-level", default="WARNING", show_default=True, help="The services' log level.")
@click.pass_context
def up(
    ctx: click.Context,
    fresh: bool,
    data_dir: Path | None,
    engine_listen: str | None,
    store_listen: str,
    engine_metrics: str,
    store_metrics: str,
    log_level: str,
) -> None:
    """Run Postgres, the store and the engine locally until Ctrl-C (or SIGTERM).

    Postgres is DATABASE_URL when set, else a local server whose data is kept between runs.
    Services listen on loopback only, in plaintext. A port 0 picks a free port.
    """
    addresses = {
        "--engine-listen": engine_listen or settings(ctx).engine,
        "--store-listen": store_listen,
        "--engine-metrics": engine_metrics,
        "--store-metrics": store_metrics,
    }
    for option, address in addresses.items():
        _loopback_only(option, address)
    _stop_on_signals()
    datadir = data_dir or data_home() / "pg"
    try:
        with postgres(datadir, fresh=fresh, say=click.echo) as database, services(
            database.url,
            engine_listen=addresses["--engine-listen"],
            store_listen=store_listen,
            engine_metrics=engine_metrics,
            store_metrics=store_metrics,
            log_level=log_level,
            say=click.echo,
        ) as running:
            for service in (running.store, running.engine):
                click.echo(
                    f"{service.name + ':':<9} {service.address} "
                    f"(pid {service.pid}, metrics {service.metrics_url})"
                )
            click.echo(
                "plaintext gRPC on loopback only (no TLS, no authentication: "
                "FLOWLEDGER_INSECURE=1, ENGINE_AUTH_DISABLED=1); Ctrl-C stops everything"
            )
            click.echo(f"ready: flowctl --engine {running.engine.address} run FILE")
            while True:
                signal.pause()  # until a signal handler raises KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    external = bool(os.environ.get("DATABASE_URL"))
    click.echo("postgres: " + ("left as it was (DATABASE_URL)" if external else "stopped"))
    click.echo("flowctl up: everything stopped")
