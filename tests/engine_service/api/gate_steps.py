"""A test-only step type that blocks until the test opens a gate: makes "mid-flow" deterministic.

``testing.gate`` (a transform) passes its inputs through unchanged once the file
``<dir>/<name>.open`` exists (for every process), or ``<dir>/<name>.open.<pid>`` (a one-shot pass
for that process: the first step to use it removes it); ``dir`` comes from
``FLOWLEDGER_TEST_GATE_DIR``. On entry it creates ``<name>.entered.<pid>``,
so a test knows which replica is inside the step, and appends the attempt's idempotency key to
``<name>.keys`` (one line per execution). Its output does not depend on the directory,
the process or the time, so fingerprints stay those of an uninterrupted run.

Loaded into engine processes with
``ENGINE_STEP_PLUGINS=tests.engine_service.api.gate_steps:install``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry, StepType

GATE_DIR_ENV = "FLOWLEDGER_TEST_GATE_DIR"
GATE_TYPE = "testing.gate"
# A step that is never let through gives up (and fails its flow) rather than hang a test run.
_GIVE_UP_S = 120.0


def gate(ctx: StepContext) -> StepResult:
    name = ctx.params["name"]
    assert isinstance(name, str)
    directory = Path(os.environ[GATE_DIR_ENV])
    pid = os.getpid()
    (directory / f"{name}.entered.{pid}").touch()
    with (directory / f"{name}.keys").open("a") as keys:  # one line per execution
        keys.write(ctx.idempotency_key + "\n")
    deadline = time.monotonic() + _GIVE_UP_S
    while not (directory / f"{name}.open").exists() and not _one_shot(directory, name, pid):
        if time.monotonic() > deadline:
            return failure(f"gate {name} was never opened", "GateTimeout")
        time.sleep(0.01)
    return success(*ctx.input_payloads)


def _one_shot(directory: Path, name: str, pid: int) -> bool:
    try:
        (directory / f"{name}.open.{pid}").unlink()
    except FileNotFoundError:
        return False
    return True


GATE = StepType(
    GATE_TYPE,
    StepKind.TRANSFORM,
    gate,
    {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string", "pattern": "^[a-z0-9-]{1,32}$"}},
    },
    "Pass inputs through once the test opens the gate",
    threaded=True,
)


def install(registry: StepRegistry) -> None:
    registry.register(GATE)


def entered(directory: Path, name: str) -> set[int]:
    """Pids of the processes that entered gate ``name``."""
    prefix = f"{name}.entered."
    return {int(p.name[len(prefix):]) for p in directory.glob(f"{prefix}*")}


def gated_document(gate_name: str) -> dict[str, object]:
    """greet → gate → shout → done: the hello flow with a gate before its second step."""
    return {
        "steps": [
            {"id": "greet", "type": "hello.greet", "config": {"name": "gate"}},
            {"id": "gate", "type": GATE_TYPE, "config": {"name": gate_name}},
            {"id": "shout", "type": "hello.shout"},
            {"id": "done", "type": "hello.done"},
        ]
    }
