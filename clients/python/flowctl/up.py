"""``flowctl up``: Postgres, the store and the engine on this machine until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from types import FrameType

import click

from flowctl._app import settings
from flowctl.devserver.datadir_lock import DataDirInUseError, datadir_lock
from flowctl.devserver.postgres import (
    PostgresCommandError,
    PostgresInUseError,
    PostgresNotFoundError,
)
from flowctl.devserver.services import (
    PostgresInfo,
    ServiceError,
    Services,
    data_home,
    port_taken,
    postgres,
    services,
)

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
_WATCH_INTERVAL_S = 0.2


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

    Postgres is DATABASE_URL when set, else a local server whose data is kept between runs;
    a data dir serves one `up` at a time (a second one refuses). Services listen on loopback
    only, in plaintext; a port 0 picks a free port, a port in use is refused. When Postgres, the
    store or the engine dies, `up` says which and stops the rest (exit 1). The services inherit
    the environment: ENGINE_STEP_PLUGINS=my_steps:install PYTHONPATH=. adds your step types.
    """
    addresses = {
        "--engine-listen": engine_listen or settings(ctx).engine,
        "--store-listen": store_listen,
        "--engine-metrics": engine_metrics,
        "--store-metrics": store_metrics,
    }
    for option, address in addresses.items():
        _loopback_only(option, address)
    for option, address in addresses.items():
        if port_taken(address):
            raise click.ClickException(
                f"{address} ({option}) is in use by another process: stop it or choose "
                f"another port with {option}"
            )
    datadir = (data_dir or data_home() / "pg").absolute()
    _stop_on_signals()
    died: str | None = None
    try:
        with contextlib.ExitStack() as stack:
            if not os.environ.get("DATABASE_URL"):
                stack.enter_context(datadir_lock(datadir))
            database = stack.enter_context(postgres(datadir, fresh=fresh, say=click.echo))
            running = stack.enter_context(services(
                database.url,
                engine_listen=addresses["--engine-listen"],
                store_listen=store_listen,
                engine_metrics=engine_metrics,
                store_metrics=store_metrics,
                log_level=log_level,
                say=click.echo,
            ))  # fmt: skip
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
            died = _watch(database, running)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is not interrupted
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            click.echo(f"{died}: stopping the rest", err=True)
    except KeyboardInterrupt:
        pass
    except (
        DataDirInUseError, PostgresInUseError, PostgresCommandError, PostgresNotFoundError,
        ServiceError,
    ) as exc:  # fmt: skip
        raise click.ClickException(str(exc)) from None
    external = bool(os.environ.get("DATABASE_URL"))
    click.echo("postgres: " + ("left as it was (DATABASE_URL)" if external else "stopped"))
    if died is not None:
        raise click.ClickException(f"{died}; everything else stopped")
    click.echo("flowctl up: everything stopped")


def _watch(database: PostgresInfo, running: Services) -> str:
    """Until a signal handler raises KeyboardInterrupt, or one of the three dies: then which
    died. Postgres is not our child (pg_ctl daemonises it), hence polling, not SIGCHLD."""
    while True:
        # What the others stand on first: a store whose Postgres died may die of it.
        if database.pid is not None and not _alive(database.pid):
            return f"postgres (pid {database.pid}) is gone"
        for service in (running.store, running.engine):
            code = service.exit_code()
            if code is not None:
                return f"the {service.name} service (pid {service.pid}) {_ended(code)}"
        time.sleep(_WATCH_INTERVAL_S)


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's (the postgres one's, under root)
        return True
    return True
