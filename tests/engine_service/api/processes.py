"""Store and engine services as real processes (``python -m store_service`` / ``engine_service``).

Each process logs to a pipe that a task keeps reading (so it never blocks on a full pipe); the
address it serves on is read from its start-up line. Every wait is bounded; whatever is still
running at the end is killed.
"""

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

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from flowctl.devserver.postgres import free_port
from tests.engine_service.api import gate_steps

REPO = Path(__file__).resolve().parents[3]
START_DEADLINE_S = 60.0
_LISTENING = re.compile(r"serving gRPC on (\S+) .*metrics on (\S+)")
ENGINE_PLUGINS = (
    "engine_service.definitions.samples:install,tests.engine_service.api.gate_steps:install"
)


def base_env(**settings: str) -> dict[str, str]:
    """The parent's environment without service settings, plus ``settings``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "STORE_", "ENGINE_", "FLOWLEDGER_"))
        and k != "LOG_LEVEL"
    }
    # Loopback plaintext, no tokens: explicitly (tests/security runs TLS and tokens).
    env.update(FLOWLEDGER_INSECURE="1", ENGINE_AUTH_DISABLED="1")
    env.update(settings)
    return env


class ServiceProcess:
    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self.address = ""
        self.metrics_url = ""
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def started(self) -> None:
        """Read the log until the service says where it listens (bounded)."""

        async def until_listening() -> None:
            assert self.proc.stderr is not None
            while True:
                raw = await self.proc.stderr.readline()
                assert raw, f"{self.name} exited before listening:\n{self.log}"
                line = raw.decode()
                self.lines.append(line)
                if match := _LISTENING.search(line):
                    self.address, self.metrics_url = match.group(1), match.group(2)
                    return

        await asyncio.wait_for(until_listening(), START_DEADLINE_S)
        self._pump = asyncio.create_task(self._keep_reading())

    async def _keep_reading(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode())

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, deadline_s: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), deadline_s)
        if self._pump is not None:
            await asyncio.wait_for(self._pump, deadline_s)
        return code

    async def health(self) -> int:
        """The overall health status, or -1 when the process does not answer."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            except grpc.RpcError:
                return -1
            return int(reply.status)

    async def serving(self) -> bool:
        return await self.health() == int(health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> bool:
        return await self.health() == int(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on the process's /metrics."""

        def scrape() -> float:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                text = response.read().decode()
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == name
            )

        return await asyncio.to_thread(scrape)


@contextlib.asynccontextmanager
async def service_process(
    module: str, env: Mapping[str, str]
) -> AsyncIterator[ServiceProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, env=dict(env), cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = ServiceProcess(proc, module)
    try:
        await running.started()
        yield running
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL later
                proc.kill()
        await running.wait(30)


def store_env(database_url: str, port: int) -> dict[str, str]:
    return base_env(
        DATABASE_URL=database_url,
        DATABASE_MAX_CONNECTIONS="8",
        STORE_LISTEN=f"127.0.0.1:{port}",
        STORE_METRICS_LISTEN="127.0.0.1:0",
        STORE_SHUTDOWN_GRACE_SECONDS="2",
    )


def engine_env(store_addr: str, gate_dir: Path, **settings: str) -> dict[str, str]:
    values = {
        "STORE_ADDR": store_addr,
        "ENGINE_LISTEN": "127.0.0.1:0",
        "ENGINE_METRICS_LISTEN": "127.0.0.1:0",
        "ENGINE_LEASE_MS": "1000",
        "ENGINE_HEARTBEAT_MS": "250",
        "ENGINE_POLL_MS": "100",
        "ENGINE_STORE_CALL_TIMEOUT_SECONDS": "2",
        "ENGINE_STORE_RETRY_BUDGET_SECONDS": "30",
        "ENGINE_STORE_PROBE_SECONDS": "0.2",
        "ENGINE_SHUTDOWN_GRACE_SECONDS": "2",
        "ENGINE_STEP_PLUGINS": ENGINE_PLUGINS,
        gate_steps.GATE_DIR_ENV: str(gate_dir),
    }
    values.update(settings)
    return base_env(**values)


__all__ = ["ServiceProcess", "engine_env", "free_port", "service_process", "store_env"]
