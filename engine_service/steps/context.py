"""What a step function sees and returns: its execution context and its result.

A step function takes a :class:`StepContext` and returns (or, when async, resolves to) a
:class:`StepSuccess` or a :class:`StepFailure`. Steps must be deterministic in what they return
for the same context: outputs become content-addressed artifacts and feed the fingerprints.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from flowledger.canonical import JsonValue


class StepKind(enum.Enum):
    """Where a step may stand in a flow: a Source first, then Transforms and Sinks."""

    SOURCE = "source"
    TRANSFORM = "transform"
    SINK = "sink"


@dataclass(frozen=True)
class ArtifactValue:
    """An artifact as a step sees it: the payload and its content hash."""

    hash: str
    payload: JsonValue


@dataclass(frozen=True)
class StepContext:
    """Everything a step may read. Treat the mappings as read-only."""

    flow_id: str
    namespace: str
    step_id: str
    index: int
    attempt: int
    # The previous step's outputs, in the order it produced them; for the Source, the flow input.
    inputs: tuple[ArtifactValue, ...]
    params: Mapping[str, JsonValue]
    flow_input: JsonValue
    variables: Mapping[str, JsonValue]
    # Outputs of every earlier step, by step id.
    results: Mapping[str, tuple[ArtifactValue, ...]]
    # "" for the step itself, "compensate" when it runs as the compensation of step_id (its
    # inputs are then that step's outputs).
    phase: str = ""

    @property
    def input_payloads(self) -> list[JsonValue]:
        return [artifact.payload for artifact in self.inputs]

    @property
    def idempotency_key(self) -> str:
        """Stable across re-executions of the same attempt (after a crash): hand it to any
        side-effecting call so that the far side can deduplicate."""
        if self.phase:
            return f"{self.flow_id}:{self.step_id}:{self.phase}:{self.attempt}"
        return f"{self.flow_id}:{self.step_id}:{self.attempt}"


@dataclass(frozen=True)
class Signal:
    """A named notification a step emits; recorded as a StepSignal event before its StepFinished."""

    name: str
    payload: JsonValue = None


@dataclass(frozen=True, init=False)
class StepSuccess:
    """Outputs (one artifact each, in order) and optional signals."""

    outputs: tuple[JsonValue, ...]
    signals: tuple[Signal, ...] = field(default=())

    def __init__(
        self,
        outputs: Iterable[JsonValue] = (),
        signals: Iterable[Signal | tuple[str, JsonValue]] = (),
    ) -> None:
        # Lists are accepted for convenience and frozen here, so a result cannot change later.
        object.__setattr__(self, "outputs", tuple(outputs))
        object.__setattr__(
            self,
            "signals",
            tuple(s if isinstance(s, Signal) else Signal(s[0], s[1]) for s in signals),
        )


@dataclass(frozen=True)
class StepFailure:
    """A deterministic failure: recorded as StepFailed, and the flow fails."""

    reason: str
    error_type: str = "StepFailure"


StepResult: TypeAlias = StepSuccess | StepFailure
StepFn: TypeAlias = Callable[[StepContext], "StepResult | Awaitable[StepResult]"]


def success(
    *outputs: JsonValue, signals: Iterable[Signal | tuple[str, JsonValue]] = ()
) -> StepSuccess:
    """Shorthand: ``return success({"count": 4})``."""
    return StepSuccess(outputs, signals)


def failure(reason: str, error_type: str = "StepFailure") -> StepFailure:
    return StepFailure(reason, error_type)
