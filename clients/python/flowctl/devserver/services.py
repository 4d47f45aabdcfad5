"""Postgres, the store and the engine as local child processes (the demo and ``flowctl up``).

::

    with postgres() as url, services(url) as running:
        print(running.engine.address)   # talk to it; everything stops when the block ends

Services run as ``python -m store_service`` / ``engine_service`` in their own session (so a
terminal's Ctrl-C reaches only the parent, which then stops them in order: engine, store,
Postgres); each is SIGTERMed and waited for, then killed if it outlives the grace period.
Everything listens on loopback, in plaintext and without tokens: the services are told so
explicitly (``FLOWLEDGER_INSECURE=1``, ``ENGINE_AUTH_DISABLED=1``; see docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowctl.devserver.postgres import LocalPostgres, free_port

DATABASE = "flowledger"
START_DEADLINE_S = 60.0
STOP_GRACE_S = 30.0

Say = Callable[[str], None]


def data_home() -> Path:
    """The per-user data directory (``$XDG_DATA_HOME/flowledger``, ``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flowledger"


def redact(url: str) -> str:
    """host:port/dbname of a libpq URL (no user, no password)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


@dataclass(frozen=True)
class PostgresInfo:
    url: str
    # The postmaster's pid when this process started the server, else None.
    pid: int | None
    description: str


@contextlib.contextmanager
def postgres(
    datadir: Path | None = None, *, fresh: bool = False, say: Say = print
) -> Iterator[PostgresInfo]:
    """``DATABASE_URL`` when set, else a local server: in ``datadir`` (kept, reused next time;
    ``fresh`` empties it first) or in a throwaway temp dir. Yields the URL of a database named
    ``flowledger`` (created when missing)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        info = PostgresInfo(url, None, f"DATABASE_URL ({redact(url)})")
        say(f"postgres: {info.description}")
        yield info
        return
    if datadir is not None and fresh and datadir.exists():
        shutil.rmtree(datadir)
    with LocalPostgres(datadir) as pg:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        where = f"data in {pg.datadir}" if datadir is not None else "throwaway"
        info = PostgresInfo(
            pg.url(DATABASE), pid, f"local server on {pg.host}:{pg.port} ({where}, pid {pid})"
        )
        say(f"postgres: {info.description}")
        yield info


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    metrics_url: str
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while it runs, else how it ended (negative: the signal that killed it)."""
        return self.process.poll()


@dataclass(frozen=True)
class Services:
    store: Service
    engine: Service


def port_taken(address: str) -> bool:
    """Whether something already listens on ``host:port`` (port 0 is never taken)."""
    host, _, port = address.rpartition(":")
    if port == "0":
        return False
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            return True
    return False


def listener_pids(port: int) -> set[int] | None:
    """The pids holding a listening TCP socket on ``port`` (any address), from /proc; None where
    /proc cannot tell (not Linux, or another account's processes hidden from us)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN
                if int(cols[1].rpartition(":")[2], 16) == port and cols[3] == "0A":
                    inodes.add(cols[9])
    if not inodes:
        return None
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        pids.add(int(proc.name))
    return pids


def loopback(address: str) -> str:
    """``host:port`` with port 0 replaced by a free port (the services must be told a port
    so that we can health-check them before they print anything)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{free_port(host)}" if port == "0" else address


@contextlib.contextmanager
def service_process(
    name: str, module: str, env: Mapping[str, str], address: str, *, say: Say = print
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m <module>`` and yield it once it is SERVING; stop it afterwards."""
    proc = subprocess.Popen(
        # -P: the caller's working directory is not put on the path, where a directory named
        # like a package (the data home's "flowledger/") would shadow the installed one.
        [sys.executable, "-P", "-m", module],
        env=dict(os.environ, **env),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_serving(address, proc, name)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        say(f"{name + ':':<9} stopped (exit {code})")


class ServiceError(RuntimeError):
    """A service did not start, or what answers on its address is not it."""


def _wait_serving(address: str, proc: subprocess.Popen[bytes], name: str) -> None:
    """Until the health check on ``address`` says SERVING and the one answering is ``proc``
    (another process may hold the port: it would answer for a child that failed to bind)."""
    deadline = time.monotonic() + START_DEADLINE_S
    port = int(address.rpartition(":")[2])
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
            if proc.poll() is not None:
                raise ServiceError(
                    f"the {name} service exited with {proc.returncode} at start-up"
                    + (f" ({address} is in use by another process)" if serving else "")
                )
            if serving:
                holders = listener_pids(port)
                if holders is None or proc.pid in holders:
                    return
                who = f"pid {', '.join(map(str, sorted(holders)))}" if holders else "a process"
                raise ServiceError(
                    f"{address} is answered by {who}, not by the {name} service flowctl "
                    "started: is another flowctl up running?"
                )
            if time.monotonic() > deadline:
                raise ServiceError(f"the {name} service was not SERVING within 60 s")
            time.sleep(0.1)


@contextlib.contextmanager
def services(
    database_url: str,
    *,
    store_listen: str = "127.0.0.1:0",
    engine_listen: str = "127.0.0.1:0",
    store_metrics: str = "127.0.0.1:0",
    engine_metrics: str = "127.0.0.1:0",
    log_level: str = "WARNING",
    say: Say = print,
) -> Iterator[Services]:
    """The store over ``database_url`` and one engine replica in front of it."""
    store_addr, engine_addr = loopback(store_listen), loopback(engine_listen)
    store_metrics, engine_metrics = loopback(store_metrics), loopback(engine_metrics)
    # Never plaintext or open by default: say it (and only on loopback, which flowctl up checks).
    open_access = {"FLOWLEDGER_INSECURE": "1", "ENGINE_AUTH_DISABLED": "1"}
    store_env = {
        **open_access,
        "DATABASE_URL": database_url,
        "STORE_LISTEN": store_addr,
        "STORE_METRICS_LISTEN": store_metrics,
        "LOG_LEVEL": log_level,
    }
    engine_env = {
        **open_access,
        "STORE_ADDR": store_addr,
        "ENGINE_LISTEN": engine_addr,
        "ENGINE_METRICS_LISTEN": engine_metrics,
        "LOG_LEVEL": log_level,
        # The demo's HTTP steps call servers on this machine (examples/http.yaml): loopback is
        # refused by default (docs/security.md, "Egress"), so allowed here, explicitly; the
        # store's metrics port stays refused (the engine's own ports are refused anyway).
        "ENGINE_EGRESS_ALLOW": "127.0.0.0/8,::1/128",
        "ENGINE_EGRESS_DENY_PORTS": store_metrics.rpartition(":")[2],
    }
    with service_process("store", "store_service", store_env, store_addr, say=say) as sproc:
        store = Service("store", store_addr, f"http://{store_metrics}/metrics", sproc)
        with service_process(
            "engine", "engine_service", engine_env, engine_addr, say=say
        ) as eproc:
            engine = Service("engine", engine_addr, f"http://{engine_metrics}/metrics", eproc)
            yield Services(store, engine)
