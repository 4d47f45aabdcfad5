"""A real Prometheus server on loopback for tests: temp storage, 1 s scrapes, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from flowctl.devserver.postgres import free_port

READY_DEADLINE_S = 30.0


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises when Prometheus rejects the expression."""
        reply = await asyncio.to_thread(self._get, "/api/v1/query", {"query": expr})
        assert reply["status"] == "success", f"{expr}: {reply}"
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    async def rules(self) -> list[dict[str, Any]]:
        reply = await asyncio.to_thread(self._get, "/api/v1/rules")
        return [rule for group in reply["data"]["groups"] for rule in group["rules"]]

    async def ready(self) -> bool:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        return await asyncio.to_thread(probe)


@contextlib.asynccontextmanager
async def running_prometheus(
    workdir: Path, jobs: Mapping[str, str], rule_files: list[Path]
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping ``jobs`` (job name -> ``host:port``) every second, evaluating
    ``rule_files`` every second; stopped (SIGTERM, then SIGKILL) at exit."""
    binary = prometheus_binary()
    assert binary is not None
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in jobs.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        while not await server.ready():
            assert proc.returncode is None, f"prometheus exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{log.read_text()}"
            await asyncio.sleep(0.1)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
