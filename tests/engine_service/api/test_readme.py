"""README examples run: every ```python block is saved as a file and run as written, twice, by
the interpreter the README's first command installs, against live services.

The blocks are complete scripts for a reader (the default address); the test only points them at
the services it started. Twice, because a reader runs a script again: the second run must give
the same output (the same definition version, the same flow by its idempotency key).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from flowledger.client import FlowledgerClient
from tests.engine_service.api.conftest import Stack

README = Path(__file__).resolve().parents[3] / "README.md"
DEFAULT_ENGINE_ADDRESS = "127.0.0.1:50052"
RUN_DEADLINE_S = 120


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples() -> None:
    assert python_blocks(), "README.md lost its Python example"


async def _run(script: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=script.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), RUN_DEADLINE_S)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_readme_python_examples_run(
    stack: Stack, client: FlowledgerClient, tmp_path: Path
) -> None:
    for i, block in enumerate(python_blocks()):
        assert DEFAULT_ENGINE_ADDRESS in block
        script = tmp_path / f"block{i}.py"
        script.write_text(block.replace(DEFAULT_ENGINE_ADDRESS, stack.engine.address))
        first = await _run(script)
        variants, fingerprint = first.split()
        assert variants == "ISFSFSFC"
        # hello-ana's golden flow fingerprint (tests/engine_service/run/test_engine.py)
        assert fingerprint == "cb21e09b5d53bc58972bc54038ba8aca7aac41c299cbdc9ad58367b630068df5"
        # Run again as a reader would: no AlreadyExists, the same flow and output.
        assert await _run(script) == first
    history = await client.list_definitions("default", "hello")
    assert [v.version for v in history.versions] == [1]
