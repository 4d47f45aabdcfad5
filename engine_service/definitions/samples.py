"""Sample flows: the seed's chem chain and a trivial 3-step "hello" flow.

Used by the tests (golden fingerprints), the local demo and the benchmark. Their step types are
registered by :func:`install`, which also works as a ``flowledger.steps`` entry point.

* ``chem``: Seed (a source emitting ``{"text": <param text>}``) → Split (one artifact per
  character, ``{"index": i, "text": c}``: one artifact per part keeps each part addressable by
  hash, and the index keeps equal characters distinct and ordered) → PrintAndCount (a sink that
  logs the parts and emits ``{"count": n}``).
* ``hello``: greet (``{"message": "hello, <name>"}``, name from the flow input, else the param)
  → shout (upper-cases it) → done (``{"length": n}``).
"""

from __future__ import annotations

import logging

from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry, StepType

log = logging.getLogger(__name__)

_NO_CONFIG = {"type": "object", "additionalProperties": False}


def seed(ctx: StepContext) -> StepResult:
    """Emit the configured text."""
    return success({"text": ctx.params["text"]})


def split(ctx: StepContext) -> StepResult:
    """One artifact per character of the input's text."""
    if len(ctx.inputs) != 1 or not isinstance(ctx.inputs[0].payload, dict):
        return failure("split expects one input object with a text", "BadInput")
    text = ctx.inputs[0].payload.get("text")
    if not isinstance(text, str):
        return failure("split expects a string 'text' in its input", "BadInput")
    return success(*({"index": i, "text": c} for i, c in enumerate(text)))


def print_and_count(ctx: StepContext) -> StepResult:
    """Log the parts and count them."""
    parts = ctx.input_payloads
    log.info("flow %s: %d parts: %s", ctx.flow_id, len(parts), parts)
    return success({"count": len(parts)})


def greet(ctx: StepContext) -> StepResult:
    name = ctx.params.get("name", "world")
    if isinstance(ctx.flow_input, dict) and isinstance(ctx.flow_input.get("name"), str):
        name = ctx.flow_input["name"]
    return success({"message": f"hello, {name}"})


def shout(ctx: StepContext) -> StepResult:
    message = ctx.input_payloads[0]["message"]
    return success({"message": message.upper()})


def done(ctx: StepContext) -> StepResult:
    return success({"length": len(ctx.input_payloads[0]["message"])})


STEP_TYPES = (
    StepType(
        "chem.seed",
        StepKind.SOURCE,
        seed,
        {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {"text": {"type": "string", "maxLength": 10_000}},
        },
        "Emit {text}",
    ),
    StepType("chem.split", StepKind.TRANSFORM, split, _NO_CONFIG, "One artifact per character"),
    StepType("chem.print_and_count", StepKind.SINK, print_and_count, _NO_CONFIG, "Count parts"),
    StepType(
        "hello.greet",
        StepKind.SOURCE,
        greet,
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 256}},
        },
        "Emit {message: hello, <name>}",
    ),
    StepType("hello.shout", StepKind.TRANSFORM, shout, _NO_CONFIG, "Upper-case the message"),
    StepType("hello.done", StepKind.SINK, done, _NO_CONFIG, "Measure the message"),
)


def install(registry: StepRegistry) -> None:
    """Register the sample step types (usable as a ``flowledger.steps`` entry point)."""
    for step_type in STEP_TYPES:
        registry.register(step_type)


def sample_registry(parent: StepRegistry | None = None) -> StepRegistry:
    """A new registry holding the sample types (over ``parent`` when given)."""
    registry = StepRegistry(parent=parent)
    install(registry)
    return registry


def chem_flow(text: str = "Hola") -> FlowDefinition:
    """Seed(text) → Split → PrintAndCount, by registered type names."""
    return (
        Flow("chem")
        .source("seed", "chem.seed", text=text)
        .transform("split", "chem.split")
        .sink("print_and_count", "chem.print_and_count")
        .build()
    )


def hello_flow(name: str = "world") -> FlowDefinition:
    """greet → shout → done: three trivial steps, each returning a small dict."""
    return (
        Flow("hello")
        .source("greet", "hello.greet", name=name)
        .transform("shout", "hello.shout")
        .sink("done", "hello.done")
        .build()
    )


CHEM_DOCUMENT = {
    "name": "chem",
    "steps": [
        {"id": "seed", "type": "chem.seed", "config": {"text": "Hola"}},
        {"id": "split", "type": "chem.split"},
        {"id": "print_and_count", "type": "chem.print_and_count"},
    ],
}
"""The chem flow as a declarative document (equal to ``chem_flow()``)."""
