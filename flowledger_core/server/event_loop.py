"""Which event loop a service runs on (``FLOWLEDGER_EVENT_LOOP``).

``uvloop`` (the default where it is installed) or ``asyncio``, the standard library's loop. The
services are grpc.aio servers and clients whose every stream message and completion passes
through the loop; on uvloop the engine and the store spend about a quarter less CPU per flow
(docs/benchmarks.md, decision 0019). Behaviour is the same on both: the test suite runs the
services in-process on the standard loop and as processes on the default one.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from flowledger_core.server.env import SettingsError

VARIABLE = "FLOWLEDGER_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")

Runner = Callable[[Coroutine[Any, Any, None]], None]


def default_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def loop_runner(environ: Mapping[str, str]) -> Runner:
    """How ``run_service`` runs its main coroutine; SettingsError names a bad choice."""
    choice = environ.get(VARIABLE, "") or default_loop()
    if choice == "asyncio":
        return asyncio.run
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise SettingsError(VARIABLE, "uvloop is not installed; use asyncio") from exc
        return uvloop.run
    raise SettingsError(VARIABLE, f"must be one of {', '.join(CHOICES)}, got {choice!r}")
