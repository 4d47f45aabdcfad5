"""``python -m store_service`` as a real process: bad settings, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowledger.v1 import store_pb2, store_pb2_grpc
from tests.store_service.helpers import append, create_flow, ev, ns

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60.0
N_EVENTS = 25_000
PAD = "p" * 400  # ~12 MB in all: more than HTTP/2 flow control lets the server buffer


def base_env(**settings: str) -> dict[str, str]:
    """The parent's environment without any store/database setting, plus ``settings``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "STORE_", "FLOWLEDGER_")) and k != "LOG_LEVEL"
    }
    env["FLOWLEDGER_INSECURE"] = "1"  # loopback plaintext, explicitly
    env.update(settings)
    return env


def run_store(env: Mapping[str, str]) -> tuple[int, str]:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "store_service"], env=dict(env), cwd=REPO,
        capture_output=True, text=True, timeout=60, check=False,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({}, "DATABASE_URL"),
        ({"DATABASE_URL": "memory:", "STORE_MAX_EVENTS_PER_APPEND": "many"},
         "STORE_MAX_EVENTS_PER_APPEND"),
        ({"DATABASE_URL": "memory:", "STORE_LISTEN": "nowhere"}, "STORE_LISTEN"),
        ({"DATABASE_URL": "host=h port", "STORE_LISTEN": "127.0.0.1:0"}, "DATABASE_URL"),
        ({"DATABASE_URL": "memory:", "DATABASE_MIN_CONNECTIONS": "9",
          "DATABASE_MAX_CONNECTIONS": "4"}, "DATABASE_MAX_CONNECTIONS"),
        ({"DATABASE_URL": "memory:", "FLOWLEDGER_EVENT_LOOP": "tokio"}, "FLOWLEDGER_EVENT_LOOP"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_variable(
    settings: dict[str, str], variable: str
) -> None:
    code, stderr = run_store(base_env(**settings))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert variable in lines[0]
    assert "Traceback" not in stderr


class StoreProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._pump: asyncio.Task[None] | None = None
        self.address = ""
        self.metrics_url = ""

    async def started(self) -> None:
        """Read the log until the service says where it listens (bounded)."""
        assert self.proc.stderr is not None
        pattern = re.compile(r"serving gRPC on (\S+) .*metrics on (\S+)")

        async def until_listening() -> None:
            assert self.proc.stderr is not None
            while True:
                raw = await self.proc.stderr.readline()
                assert raw, "the store exited before listening:\n" + "".join(self.lines)
                line = raw.decode()
                self.lines.append(line)
                if match := pattern.search(line):
                    self.address, self.metrics_url = match.group(1), match.group(2)
                    return

        await asyncio.wait_for(until_listening(), START_DEADLINE_S)
        self._pump = asyncio.create_task(self._keep_reading())

    async def _keep_reading(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode())

    async def wait(self, deadline_s: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), deadline_s)
        if self._pump is not None:
            await asyncio.wait_for(self._pump, deadline_s)
        return code


@contextlib.asynccontextmanager
async def store_process(env: Mapping[str, str]) -> AsyncIterator[StoreProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "store_service", env=dict(env), cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = StoreProcess(proc)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
        await running.wait(30)


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(sample name, grpc_method) → value for the gRPC server metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("grpc_server_") and "grpc_method" in sample.labels:
                key = (sample.name, sample.labels["grpc_method"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


async def test_sigterm_lets_a_long_read_finish_then_exits_0(migrated_database_url: str) -> None:
    env = base_env(
        DATABASE_URL=migrated_database_url,
        DATABASE_MAX_CONNECTIONS="4",
        STORE_LISTEN="127.0.0.1:0",
        STORE_METRICS_LISTEN="127.0.0.1:0",
        STORE_SHUTDOWN_GRACE_SECONDS="60",
    )
    async with store_process(env) as store:
        await store.started()
        async with grpc.aio.insecure_channel(store.address) as channel:
            stub = store_pb2_grpc.StoreServiceStub(channel)
            space = ns()
            flow = await create_flow(stub, space)
            for start in range(0, N_EVENTS, 1000):
                await append(stub, space, flow.flow_id, start,
                             *[ev(i=start + k + 1, pad=PAD) for k in range(1000)])

            stream = stub.ReadEvents(
                store_pb2.ReadEventsRequest(namespace=space, flow_id=flow.flow_id, chunk_size=5)
            )
            first = await stream.read()
            assert isinstance(first, store_pb2.ReadEventsResponse)
            versions = [e.version for e in first.events]
            metrics = await asyncio.to_thread(scrape, store.metrics_url)
            assert metrics[("grpc_server_started_total", "ReadEvents")] == 1
            assert ("grpc_server_handled_total", "ReadEvents") not in metrics  # in flight

            store.proc.send_signal(signal.SIGTERM)
            while (response := await stream.read()) is not grpc.aio.EOF:
                assert isinstance(response, store_pb2.ReadEventsResponse)
                versions.extend(e.version for e in response.events)
            assert await stream.code() == grpc.StatusCode.OK
            assert versions == list(range(1, N_EVENTS + 1))

        assert await store.wait(60) == 0
    log = "".join(store.lines)
    assert "received SIGTERM" in log
    assert "store stopped" in log
    assert "Traceback" not in log
