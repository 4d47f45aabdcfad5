"""Engine benchmark: flowledger against DBOS Transact, in one run, on one Postgres server.

    make bench-engine     # or: .venv/bin/python -m bench.engine_bench [--flows N] [--warmup N]

Uses ``DATABASE_URL`` (an admin URL) when set, else starts a throwaway local Postgres (fsync on).
Each system gets its own database on that server. The workload is the same on both sides: a
3-step flow of trivial steps, each returning a small dict (the ``hello`` sample: greet → shout →
done), run from 1 and from 16 concurrent starters, each starter starting its next flow when it
has seen the previous one complete.

* flowledger: the store (``python -m store_service``) and one engine (``python -m
  engine_service``) run as their own processes; this process is the client. A flow's latency is
  StartFlow → WatchFlow reports it completed: client → engine → store → Postgres and back. The
  watch is close-only (``WATCH_FILTER_CLOSE_EVENT``): the one message that ends it carries the
  outcome, as DBOS's ``get_result`` returns only the result (not one message per append).
* DBOS: the workflow runs in this process (DBOS is a library; its workers are the caller's
  process). A workflow's latency is ``DBOS.start_workflow`` → ``handle.get_result()`` returns;
  starters are threads, as DBOS's synchronous API runs workflows on its thread pool.

Both sides are measured from the moment the client asks for a flow until it observes completion.
Speed targets live here, never in tests: at 16 starters flowledger sustains at least 2x DBOS's
flows/s, with a p50 latency no worse than DBOS's.

It also prints the CPU each flow cost per process (Linux ``/proc``; Postgres only when its server
runs on this machine), which tells where the time goes on a machine with few cores.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from dbos import DBOS, DBOSConfig
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import fresh_database, postgres_cpu, postgres_url, process_cpu
from flowctl.devserver.postgres import free_port
from flowledger.client import FlowledgerClient
from flowledger.types import FlowStatus

NAMESPACE = "bench"
DEFINITION = "hello"
DOCUMENT = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "bench"}},
        {"id": "shout", "type": "hello.shout"},
        {"id": "done", "type": "hello.done"},
    ]
}
STARTERS = (1, 16)
FLOW_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Result:
    system: str
    starters: int
    latencies: tuple[float, ...]
    seconds: float
    cpu: Mapping[str, float | None]  # CPU microseconds per flow, by process

    @property
    def flows(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.flows / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- CPU accounting (as in store_bench.py) -----------------------------------------------------


Probes = Mapping[str, Callable[[], float | None]]


def cpu_per_flow(
    probes: Probes, flows: int, run: Callable[[], tuple[tuple[float, ...], float]]
) -> tuple[tuple[float, ...], float, dict[str, float | None]]:
    before = {name: probe() for name, probe in probes.items()}
    latencies, seconds = run()
    after = {name: probe() for name, probe in probes.items()}
    cpu: dict[str, float | None] = {}
    for name, start in before.items():
        end = after[name]
        cpu[name] = None if start is None or end is None else (end - start) / flows * 1e6
    return latencies, seconds, cpu


# -- Postgres ------------------------------------------------------------------------------------


def as_url(conninfo: str) -> str:
    """A ``postgresql://`` URL of a conninfo (DBOS parses URLs with SQLAlchemy)."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = parts.get("user") or "postgres"
    password = f":{parts['password']}" if parts.get("password") else ""
    host, port = parts.get("host") or "127.0.0.1", parts.get("port") or 5432
    return f"postgresql://{user}{password}@{host}:{port}/{parts['dbname']}"


# -- flowledger ----------------------------------------------------------------------------------


def service_env(**settings: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "STORE_", "ENGINE_", "FLOWLEDGER_"))
        and k != "LOG_LEVEL"
    }
    # Loopback plaintext without tokens, asked for explicitly (docs/security.md).
    open_access = {"FLOWLEDGER_INSECURE": "1", "ENGINE_AUTH_DISABLED": "1"}
    return {**env, "LOG_LEVEL": "WARNING", **open_access, **settings}


def start_service(module: str, env: Mapping[str, str], addr: str) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` and wait (bounded) until its gRPC health says SERVING."""
    proc = subprocess.Popen([sys.executable, "-m", module], env=dict(env))
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
            except grpc.RpcError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise SystemExit(f"{module} did not become healthy")
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


async def flowledger_run(addr: str, starters: int, flows: int) -> tuple[tuple[float, ...], float]:
    """``flows`` flows from ``starters`` concurrent starters: (latencies, elapsed seconds)."""
    async with FlowledgerClient(addr) as client:
        latencies: list[float] = []

        async def one_flow(i: int) -> None:
            t0 = time.perf_counter()
            started = await client.start_flow(NAMESPACE, DEFINITION, {"name": f"n{i}"})
            end = await client.wait_for_end(NAMESPACE, started.flow_id, within=FLOW_DEADLINE_S)
            status = end.status
            latencies.append(time.perf_counter() - t0)
            if status is not FlowStatus.COMPLETED:
                raise SystemExit(f"flow {started.flow_id} ended {status}")

        async def starter(share: range) -> None:
            for i in share:
                await one_flow(i)

        start = time.perf_counter()
        await asyncio.gather(*(starter(range(s, flows, starters)) for s in range(starters)))
        return tuple(latencies), time.perf_counter() - start


async def publish_definition(addr: str) -> None:
    async with FlowledgerClient(addr) as client:
        created = await client.create_definition(NAMESPACE, DEFINITION, DOCUMENT)
        await client.publish_definition(NAMESPACE, DEFINITION, created.version.version)


def bench_flowledger(url: str, pg: Callable[[], float | None], args: argparse.Namespace) -> (
    list[Result]
):
    store_addr, engine_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    store = start_service(
        "store_service",
        service_env(
            DATABASE_URL=url,
            STORE_LISTEN=store_addr,
            STORE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
        ),
        store_addr,
    )
    try:
        engine = start_service(
            "engine_service",
            service_env(
                STORE_ADDR=store_addr,
                ENGINE_LISTEN=engine_addr,
                ENGINE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            ),
            engine_addr,
        )
        try:
            asyncio.run(publish_definition(engine_addr))
            asyncio.run(flowledger_run(engine_addr, max(STARTERS), args.warmup))
            probes: Probes = {
                "engine": lambda: process_cpu(engine.pid),
                "store": lambda: process_cpu(store.pid),
                "client": lambda: process_cpu(os.getpid()),
                "postgres": pg,
            }

            def scenario(starters: int) -> tuple[tuple[float, ...], float]:
                return asyncio.run(flowledger_run(engine_addr, starters, args.flows))

            results = []
            for n in STARTERS:
                lat, secs, cpu = cpu_per_flow(probes, args.flows, functools.partial(scenario, n))
                results.append(Result("flowledger", n, lat, secs, cpu))
            return results
        finally:
            stop(engine)
    finally:
        stop(store)


# -- DBOS ----------------------------------------------------------------------------------------


@DBOS.step()
def greet(name: str) -> dict[str, Any]:
    return {"message": f"hello, {name}"}


@DBOS.step()
def shout(message: str) -> dict[str, Any]:
    return {"message": message.upper()}


@DBOS.step()
def done(message: str) -> dict[str, Any]:
    return {"length": len(message)}


@DBOS.workflow()
def hello(name: str) -> dict[str, Any]:
    greeting = greet(name)
    loud = shout(greeting["message"])
    return done(loud["message"])


def dbos_run(starters: int, flows: int) -> tuple[tuple[float, ...], float]:
    """``flows`` workflows from ``starters`` threads: (latencies, elapsed seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def starter(share: range) -> None:
        for i in share:
            t0 = time.perf_counter()
            handle = DBOS.start_workflow(hello, f"n{i}")
            result = handle.get_result()
            elapsed = time.perf_counter() - t0
            if result != {"length": len(f"hello, n{i}")}:
                raise SystemExit(f"workflow {handle.get_workflow_id()} returned {result!r}")
            with lock:
                latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=starters) as pool:
        for future in [pool.submit(starter, range(s, flows, starters)) for s in range(starters)]:
            future.result()
    return tuple(latencies), time.perf_counter() - start


def bench_dbos(url: str, pg: Callable[[], float | None], args: argparse.Namespace) -> (
    list[Result]
):
    config: DBOSConfig = {
        "name": "flowledger-bench",
        "system_database_url": as_url(url),
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        dbos_run(max(STARTERS), args.warmup)
        probes: Probes = {"client": lambda: process_cpu(os.getpid()), "postgres": pg}
        results = []
        for n in STARTERS:
            scenario = functools.partial(dbos_run, n, args.flows)
            lat, secs, cpu = cpu_per_flow(probes, args.flows, scenario)
            results.append(Result("DBOS", n, lat, secs, cpu))
        return results
    finally:
        DBOS.destroy()


# -- report --------------------------------------------------------------------------------------


def fmt_row(r: Result) -> str:
    return (
        f"{r.system:<11} {r.starters:>8} {r.flows:>6} {r.seconds:8.2f} {r.rate:8.1f}"
        f" {r.pct(0.50):7.2f} {r.pct(0.99):8.2f}"
    )


def fmt_cpu(r: Result) -> str:
    parts = [
        f"{name} {value:,.0f}" if value is not None else f"{name} -"
        for name, value in r.cpu.items()
    ]
    return f"  {r.system:<11} {r.starters:>2} starters: " + " / ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=300, help="flows per scenario and system")
    parser.add_argument("--warmup", type=int, default=48, help="warm-up flows per system")
    args = parser.parse_args()
    # Before we add our own: the machine may be shared, and the figures depend on it.
    load_before = os.getloadavg()

    with postgres_url() as admin_url:
        pg = postgres_cpu(admin_url)
        with psycopg.connect(admin_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        ours = bench_flowledger(fresh_database(admin_url, "flowledger_engine_bench"), pg, args)
        theirs = bench_dbos(fresh_database(admin_url, "dbos_engine_bench"), pg, args)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores,"
        f" 1-min load average {load_before[0]:.2f} before the run,"
        f" Python {platform.python_version()}, Postgres {version[0] if version else '?'}"
        f" (fsync={fsync[0] if fsync else '?'})"
    )
    print("workload: 3 trivial steps per flow; latency = ask for a flow → observe completion")
    print(
        f"{'system':<11} {'starters':>8} {'flows':>6} {'seconds':>8} {'flows/s':>8}"
        f" {'p50 ms':>7} {'p99 ms':>8}"
    )
    for r in (*ours, *theirs):
        print(fmt_row(r))
    print()
    print("CPU per flow (us), by process (DBOS runs in the client process):")
    for r in (*ours, *theirs):
        print(fmt_cpu(r))
    print()
    ours16, theirs16 = ours[-1], theirs[-1]
    ratio = ours16.rate / theirs16.rate
    print(
        f"target 1: flowledger / DBOS flows/s at 16 starters = {ratio:.2f}x (target >= 2.00x)"
        f" -> {'met' if ratio >= 2 else 'NOT met'}"
    )
    p50_ours, p50_theirs = ours16.pct(0.5), theirs16.pct(0.5)
    print(
        f"target 2: p50 at 16 starters: flowledger {p50_ours:.2f} ms vs DBOS {p50_theirs:.2f} ms"
        f" (target: flowledger <= DBOS) -> {'met' if p50_ours <= p50_theirs else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
