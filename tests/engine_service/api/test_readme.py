"""README examples run: every ```python block is executed against live services.

The blocks are written for a reader (top-level ``async with``, the default address); the test
only wraps each in a coroutine and points it at the services this test started.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

from tests.engine_service.api.conftest import Stack

README = Path(__file__).resolve().parents[3] / "README.md"
DEFAULT_ENGINE_ADDRESS = "127.0.0.1:50052"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples() -> None:
    assert python_blocks(), "README.md lost its Python example"


async def test_readme_python_examples_run(stack: Stack) -> None:
    for block in python_blocks():
        assert DEFAULT_ENGINE_ADDRESS in block
        code = block.replace(DEFAULT_ENGINE_ADDRESS, stack.engine.address)
        source = "async def __example__():\n" + textwrap.indent(code, "    ")
        namespace: dict[str, object] = {}
        exec(compile(source, str(README), "exec"), namespace)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await namespace["__example__"]()  # type: ignore[operator]
        variants, fingerprint = out.getvalue().split()
        assert variants == "ISFSFSFC"
        # hello-ana's golden flow fingerprint (tests/engine_service/run/test_engine.py)
        assert fingerprint == "cb21e09b5d53bc58972bc54038ba8aca7aac41c299cbdc9ad58367b630068df5"
