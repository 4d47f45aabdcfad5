"""Store benchmark: raw psycopg against the store service, in one run, on one Postgres.

    make bench            # or: .venv/bin/python -m bench.store_bench [--events N] [--read-events N]

Uses ``DATABASE_URL`` when set, else starts a throwaway local Postgres. The store runs as its own
process (``python -m store_service``) and is called over real gRPC on loopback, so the figures
include protobuf, HTTP/2 and the Python server. Speed targets live here, never in tests:

* 16 concurrent clients appending single events to different flows sustain at least 2x the raw
  one-connection, one-transaction-per-event rate;
* reading 100k events of one flow through the store takes no longer than raw psycopg
  fetch-and-decode of the same rows.

Each append scenario runs three ways: one AppendEvents call per event; each client over its own
AppendStream (send a command, await its answer, send the next); and every client through one
shared client, the one an engine replica's flows share (one AppendStream whose requests, and
answers, waiting at the same time go in one message). The clients run on the event loop the
services run on (uvloop unless ``FLOWLEDGER_EVENT_LOOP`` says otherwise), as engine replicas do.

For the append scenarios it also prints the CPU each event cost in the store process, in this
(client) process and in Postgres (Linux ``/proc``; Postgres only when its server runs on this
machine), and the 16-client rate of the same store over its in-memory backend: the ceiling of
the gRPC layer and the client on this machine, whatever the database does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import (
    client_loop,
    fresh_database,
    postgres_cpu,
    postgres_url,
    process_cpu,
    run,
)
from bench._store_calls import (
    NAMESPACE,
    PAYLOAD,
    Result,
    fill_flow,
    store_append,
    store_append_shared,
    store_append_stream,
    store_read,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cpu:
    """CPU microseconds per event: the store process, this process, Postgres (None: unknown)."""

    store: float | None
    client: float | None
    postgres: float | None


def measure_cpu(
    store_pid: int, pg: Callable[[], float | None], events: int, run: Callable[[], Result]
) -> tuple[Result, Cpu]:
    marks = (process_cpu(store_pid), process_cpu(os.getpid()), pg())
    result = run()
    after = (process_cpu(store_pid), process_cpu(os.getpid()), pg())
    per_event = [
        None if a is None or b is None else (a - b) / events * 1e6
        for a, b in zip(after, marks, strict=True)
    ]
    return result, Cpu(*per_event)


def create_flows(url: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(url) as conn:
        for fid in ids:
            conn.execute(
                "INSERT INTO flows (flow_id, namespace, name, status)"
                " VALUES (%s, %s, 'raw', 'running')",
                (fid, NAMESPACE),
            )
            conn.execute(
                "INSERT INTO flow_generations (flow_id, generation, base_version)"
                " VALUES (%s, 0, 0)",
                (fid,),
            )
    return ids


RAW_INSERT = (
    "INSERT INTO event_log (flow_id, event_type, payload, version, command_id)"
    " VALUES (%s, 'step_finished', %s::jsonb, %s, %s)"
)


def raw_single(url: str, events: int) -> Result:
    """One connection, one transaction (one commit) per event: the baseline."""
    (fid,) = create_flows(url, 1)
    lat: list[float] = []
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for v in range(1, events + 1):
            t0 = time.perf_counter()
            conn.execute(RAW_INSERT, (fid, PAYLOAD, v, f"c{v}"))
            conn.commit()
            lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    return Result("raw psycopg, 1 conn, 1 txn/event", events, elapsed, tuple(lat))


def raw_batched(url: str, events: int, batch: int = 100) -> Result:
    (fid,) = create_flows(url, 1)
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur:
            for first in range(1, events + 1, batch):
                rows = [
                    (fid, PAYLOAD, v, f"c{v}") for v in range(first, min(first + batch, events + 1))
                ]
                cur.executemany(RAW_INSERT, rows)
                conn.commit()
        elapsed = time.perf_counter() - start
    return Result(f"raw psycopg, 1 conn, {batch}-event txns", events, elapsed)


def raw_read(url: str, flow_id: str, expected: int) -> Result:
    """Fetch-and-decode: rows as Python objects, payload parsed by psycopg's jsonb loader."""
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        rows = conn.execute(
            "SELECT seq, flow_id, version, event_type, payload, ts, command_id FROM event_log"
            " WHERE flow_id = %s ORDER BY version",
            (flow_id,),
        ).fetchall()
        elapsed = time.perf_counter() - start
    assert len(rows) == expected, (len(rows), expected)
    return Result(f"raw psycopg fetch+decode {expected:,}", expected, elapsed)


def start_store(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=url,
        STORE_LISTEN=f"127.0.0.1:{port}",
        STORE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
        FLOWLEDGER_INSECURE="1",  # loopback plaintext, explicitly
    )
    proc = subprocess.Popen([sys.executable, "-m", "store_service"], env=env)
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, addr
            except grpc.RpcError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("store service did not become healthy")
            time.sleep(0.1)


def fmt_row(r: Result, baseline: Result | None) -> str:
    p50, p99 = r.pct(0.50), r.pct(0.99)
    lat = f"{p50:7.2f} {p99:8.2f}" if p50 is not None and p99 is not None else f"{'-':>7} {'-':>8}"
    ratio = f"{r.rate / baseline.rate:6.2f}x" if baseline else "   base"
    return f"{r.name:<46} {r.events:>8,} {r.seconds:8.2f} {r.rate:11,.0f} {lat} {ratio}"


def fmt_cpu(value: float | None) -> str:
    return f"{value:5.0f}" if value is not None else "    -"


# How the bench's clients append: per call, per client stream, through one shared client.
CLIENTS: dict[str, Callable[[str, int, int], Coroutine[Any, Any, Result]]] = {
    "unary": store_append,
    "AppendStream": store_append_stream,
    "shared client": store_append_shared,
}


@dataclass(frozen=True)
class Appends:
    """One way of appending, measured from 1 and 16 clients and over the memory backend."""

    kind: str
    one: tuple[Result, Cpu]
    many: tuple[Result, Cpu]
    ceiling: tuple[Result, Cpu] | None = None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000, help="events per append scenario")
    parser.add_argument("--read-events", type=int, default=100_000, help="large read size")
    args = parser.parse_args()

    with postgres_url() as admin_url:
        url = fresh_database(admin_url, "flowledger_bench")
        from store_service.adapters.postgres.migrate import apply_migrations

        asyncio.run(apply_migrations(url))
        raw1 = raw_single(url, args.events)
        rawb = raw_batched(url, args.events * 10)
        pg_cpu = postgres_cpu(admin_url)
        per_client = max(1, args.events // 4)

        def appends(
            store: subprocess.Popen[bytes],
            addr: str,
            clients: int,
            kind: str,
            pg: Callable[[], float | None] = pg_cpu,
        ) -> tuple[Result, Cpu]:
            events = args.events if clients == 1 else 16 * per_client
            return measure_cpu(
                store.pid,
                pg,
                events,
                lambda: run(CLIENTS[kind](addr, clients, events // clients)),
            )

        proc, addr = start_store(url)
        try:
            results = [
                Appends(kind, appends(proc, addr, 1, kind), appends(proc, addr, 16, kind))
                for kind in CLIENTS
            ]
            reads: list[tuple[Result, Result]] = []
            for size in (10_000, args.read_events):
                flow_id = run(fill_flow(addr, size))
                raw_r = raw_read(url, flow_id, size)
                store_r = run(store_read(addr, flow_id, size))
                reads.append((raw_r, store_r))
            with psycopg.connect(admin_url) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                fsync = conn.execute("SHOW fsync").fetchone()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        memory_proc, memory_addr = start_store("memory:")
        try:
            results = [
                replace(
                    r,
                    ceiling=memory_backend(
                        appends(memory_proc, memory_addr, 16, r.kind, lambda: None),
                        r.kind,
                    ),
                )
                for r in results
            ]
        finally:
            memory_proc.terminate()
            memory_proc.wait(timeout=30)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, Postgres {row[0] if row else '?'}"
        f" (fsync={fsync[0] if fsync else '?'}); bench clients on {client_loop()}"
    )
    print(
        f"{'scenario':<46} {'events':>8} {'seconds':>8} {'events/s':>11}"
        f" {'p50 ms':>7} {'p99 ms':>8}  ratio"
    )
    print(fmt_row(raw1, None))
    print(fmt_row(rawb, raw1))
    for r in results:
        print(fmt_row(r.one[0], raw1))
        print(fmt_row(r.many[0], raw1))
        if r.ceiling is not None:
            print(fmt_row(r.ceiling[0], raw1))
    for raw_r, store_r in reads:
        print(fmt_row(raw_r, None))
        print(fmt_row(store_r, raw_r))
    print()
    print("CPU per appended event (us): store process / bench client / Postgres")
    for r in results:
        for result, cpu in (r.one, r.many, *([r.ceiling] if r.ceiling else [])):
            print(
                f"  {result.name:<46} {fmt_cpu(cpu.store)} / {fmt_cpu(cpu.client)}"
                f" / {fmt_cpu(cpu.postgres)}"
            )
    print()
    ratios = {r.kind: r.many[0].rate / raw1.rate for r in results}
    met = [kind for kind, ratio in ratios.items() if ratio >= 2]
    verdict_read = reads[-1][1].seconds / reads[-1][0].seconds
    print(
        "target 1: 16 clients appending single events / raw single (target >= 2.00x): "
        + ", ".join(f"{kind} {ratio:.2f}x" for kind, ratio in ratios.items())
        + f" -> {'met by ' + ', '.join(met) if met else 'NOT met'}"
    )
    print(
        "  (ceiling, the same store over its memory backend: "
        + ", ".join(f"{r.kind} {r.ceiling[0].rate / raw1.rate:.2f}x" for r in results if r.ceiling)
        + ")"
    )
    print(
        f"target 2: store read {args.read_events:,} time / raw fetch+decode time"
        f" = {verdict_read:.2f}"
        f" (target <= 1.00) -> {'met' if verdict_read <= 1 else 'NOT met'}"
    )


def memory_backend(measured: tuple[Result, Cpu], kind: str) -> tuple[Result, Cpu]:
    result, cpu = measured
    return replace(result, name=f"store gRPC {kind}, 16, memory backend"), cpu


if __name__ == "__main__":
    main()
