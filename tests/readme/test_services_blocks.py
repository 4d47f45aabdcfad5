"""The README's "run the services separately" blocks, run as written against a real Postgres.

The store's and the engine's command lines run as the README writes them (their ``NAME=value``
prefixes become the environment, ``.venv/bin/python`` is this interpreter). Only addresses are
substituted, and only through the variables the services read: ``DATABASE_URL`` (the README's is
a placeholder) names a fresh database, ``STORE_ADDR`` the store this test started, and the
listen and metrics addresses are free ports, so that the test never collides with a service
already on the defaults. Then the metrics block runs: ``flowctl run`` (aimed by
``FLOWLEDGER_ENGINE``) and the ``curl | grep`` lines through bash, with the default metrics
ports replaced by the ones the services listen on. Both services stop on SIGTERM with exit 0.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowctl.devserver.postgres import free_port
from tests.clients.python.flowctl.live import FLOWCTL, REPO, service_env
from tests.fixtures.postgres import PgServer, fresh_database
from tests.readme.blocks import HELLO_ANA_FLOW_FINGERPRINT, readme_block

DEADLINE_S = 60.0
ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")
STORE_METRICS_DEFAULT = "127.0.0.1:9464"
ENGINE_METRICS_DEFAULT = "127.0.0.1:9465"


def command_line(block_start: str) -> tuple[dict[str, str], list[str]]:
    """The one-line block's ``NAME=value`` prefixes and its argv, split as a shell would."""
    block = readme_block("bash", block_start)
    assert len(block.lines) == 1, block.content
    words = shlex.split(block.lines[0], comments=True)
    assignments = [w for w in words if ASSIGNMENT.match(w)]
    argv = words[len(assignments) :]
    assert argv[:1] == [".venv/bin/python"], argv
    env = dict(a.split("=", 1) for a in assignments)
    return env, [sys.executable, *argv[1:]]


def loopback() -> str:
    return f"127.0.0.1:{free_port()}"


@contextlib.contextmanager
def service(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A service process whose output goes to ``log`` (a pipe nobody reads could fill up and
    block it); SIGTERMed, then killed past the deadline, if the test did not stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not SERVING in {DEADLINE_S} s:\n{log.read_text()}"
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=DEADLINE_S)
    assert code == 0, f"exited {code} after SIGTERM:\n{log.read_text()}"


def run_metrics_block(engine: str, store_metrics: str, engine_metrics: str) -> None:
    block = readme_block("bash", "flowctl run examples/hello.yaml")
    run_line, *curl_lines = block.lines
    env = dict(service_env(), FLOWLEDGER_ENGINE=engine)
    argv = shlex.split(run_line, comments=True)
    assert argv[0] == "flowctl"
    ran = subprocess.run(
        [FLOWCTL, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(rf"^flow fingerprint:\s+{HELLO_ANA_FLOW_FINGERPRINT}$", ran.stdout, re.M)

    assert [STORE_METRICS_DEFAULT in curl_lines[0], ENGINE_METRICS_DEFAULT in curl_lines[1]] == [
        True, True,
    ]  # fmt: skip
    for line in curl_lines:
        line = line.replace(STORE_METRICS_DEFAULT, store_metrics)
        line = line.replace(ENGINE_METRICS_DEFAULT, engine_metrics)
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=DEADLINE_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}:\n{done.stdout}{done.stderr}"
        # One sample line per label set, each `name{labels} value`; the flow counted at least once.
        assert sum(float(s.split()[-1]) for s in done.stdout.splitlines()) >= 1, done.stdout


def test_services_run_separately_as_written(pg_server: PgServer, tmp_path: Path) -> None:
    store_env, store_argv = command_line("FLOWLEDGER_INSECURE=1 DATABASE_URL=")
    engine_env, engine_argv = command_line("FLOWLEDGER_INSECURE=1 ENGINE_AUTH_DISABLED=1")
    assert store_argv[1:] == ["-m", "store_service"]
    assert engine_argv[1:] == ["-m", "engine_service"]
    assert set(store_env) == {"FLOWLEDGER_INSECURE", "DATABASE_URL"}
    assert set(engine_env) == {"FLOWLEDGER_INSECURE", "ENGINE_AUTH_DISABLED", "STORE_ADDR"}

    store_addr, store_metrics = loopback(), loopback()
    engine_addr, engine_metrics = loopback(), loopback()
    store_log, engine_log = tmp_path / "store.log", tmp_path / "engine.log"
    # service_env(): no inherited DATABASE_/STORE_/ENGINE_/FLOWLEDGER_ setting redirects them.
    with fresh_database(pg_server) as url:
        store_env |= {
            "DATABASE_URL": url, "STORE_LISTEN": store_addr, "STORE_METRICS_LISTEN": store_metrics,
        }  # fmt: skip
        engine_env |= {
            "STORE_ADDR": store_addr, "ENGINE_LISTEN": engine_addr,
            "ENGINE_METRICS_LISTEN": engine_metrics,
        }  # fmt: skip
        with service(store_argv, service_env() | store_env, store_log) as store:
            wait_serving(store_addr, store, store_log)
            with service(engine_argv, service_env() | engine_env, engine_log) as engine:
                wait_serving(engine_addr, engine, engine_log)
                run_metrics_block(engine_addr, store_metrics, engine_metrics)
                stop(engine, engine_log)
            stop(store, store_log)
