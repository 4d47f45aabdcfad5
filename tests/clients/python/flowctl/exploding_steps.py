"""A step plugin for ``flowctl up`` tests (``ENGINE_STEP_PLUGINS=...exploding_steps:install``
with the repo on ``PYTHONPATH``): ``test.explode`` raises from a nested call, so that the engine's
log must carry the traceback to say where."""

from __future__ import annotations

from engine_service.steps.context import StepContext, StepKind, StepResult
from engine_service.steps.registry import StepRegistry, StepType


def _deep_inside(order: object) -> None:
    raise ValueError(f"order {order!r} cannot be packed")


def explode(ctx: StepContext) -> StepResult:
    _deep_inside(ctx.params.get("order"))
    raise AssertionError("unreachable")


def install(registry: StepRegistry) -> None:
    registry.register(StepType(
        "test.explode", StepKind.SOURCE, explode,
        {"type": "object", "properties": {"order": {"type": "integer"}}}, "Always raises",
    ))  # fmt: skip
