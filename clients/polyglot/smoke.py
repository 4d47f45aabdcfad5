"""Go and Java smoke tests against the live services (run by clients/polyglot/check.sh).

Starts ``python -m store_service`` (in memory) and ``python -m engine_service`` on loopback,
runs each language's smoke program (it creates and publishes "hello", starts a flow with the same
input, watches it to the end and prints its fingerprint as a JSON line) and checks, with the
Python SDK, that every flow completed and that every language's fingerprint is the one the
engine reports and the one a flow started from Python gets: same definition and input, same
fingerprint, whoever started it.

    .venv/bin/python clients/polyglot/smoke.py \\
        "go:build/go-smoke -addr {addr} -ns {ns} -input {input}" "java:java ... Smoke {addr} ..."
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]

from flowledger.client import FlowledgerClient  # noqa: E402
from tests.engine_service.api.processes import (  # noqa: E402
    engine_env,
    free_port,
    service_process,
    store_env,
)

INPUT: dict[str, Any] = {"name": "Ada", "note": "\u00e9\U0001F600", "n": 1.5}
HELLO = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        {"id": "shout", "type": "hello.shout"},
        {"id": "done", "type": "hello.done"},
    ]
}
RUN_DEADLINE_S = 120.0


async def run_program(label: str, template: str, addr: str) -> dict[str, Any]:
    ns = f"{label}-{uuid.uuid4().hex[:10]}"
    argv = [
        part.format(addr=addr, ns=ns, input=json.dumps(INPUT)) for part in shlex.split(template)
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_DEADLINE_S)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["namespace"] = ns
    return result


async def main(programs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as gates:
        store_port = free_port()
        async with service_process(
            "store_service", store_env("memory:", store_port)
        ) as store, service_process(
            "engine_service", engine_env(store.address, Path(gates))
        ) as engine, FlowledgerClient(engine.address, timeout=30) as sdk:
            created = await sdk.create_definition("py-smoke", "hello", HELLO)
            await sdk.publish_definition("py-smoke", "hello", created.version.version)
            started = await sdk.start_flow("py-smoke", "hello", INPUT)
            reference = await sdk.wait_for_flow("py-smoke", started.flow_id, within=60)
            expected = reference.flow_fingerprint
            assert expected is not None, reference
            assert len(expected) == 64, reference
            print(f"python: {expected}")
            for spec in programs:
                label, template = spec.split(":", 1)
                result = await run_program(label, template, engine.address)
                view = await sdk.describe_flow(result["namespace"], result["flow_id"])
                print(f"{label}: {result}")
                assert result["status"] == "FLOW_STATUS_COMPLETED", result
                assert result["events"] >= 8, result
                assert result["flow_fingerprint"] == view.flow_fingerprint, (result, view)
                assert result["flow_fingerprint"] == expected, (label, result, expected)
    print(f"ok: {', '.join(p.split(':', 1)[0] for p in programs)} agree with python")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
