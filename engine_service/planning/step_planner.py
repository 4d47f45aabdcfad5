"""What the step kinds planned outside the planner (waits, ``when`` conditions, compensations)
need of it: :class:`StepPlanner`, which :class:`~engine_service.planning.planner.WritePlanner` is.

A Protocol of its own so that those modules depend on this contract, not on the planner that
calls them (which would make an import circle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from engine_service.core.events import EngineEvent, FlowInitialized, StepStarted
from engine_service.core.replay import FlowState
from engine_service.core.writes import Write
from engine_service.steps.context import StepContext
from engine_service.steps.executor import Outcome
from engine_service.steps.registry import StepType
from engine_service.steps.retry import StepDefaults
from flowledger.canonical import JsonValue
from flowledger_core.domain import NewArtifact


class StepPlanner(Protocol):
    """The planner of one flow's writes, as a step kind's planning sees it."""

    flow_id: str
    clock: Callable[[], datetime]

    @property
    def defaults(self) -> StepDefaults: ...

    def outcome_write(
        self,
        state: FlowState,
        index: int,
        attempt: int,
        generation: int,
        chain: bool,
        outcome: Outcome,
        prefix: Sequence[EngineEvent] = (),
    ) -> Write: ...

    def after_step(
        self,
        state: FlowState,
        init: FlowInitialized,
        index: int,
        attempt: int,
        generation: int,
        chain: bool,
        events: list[EngineEvent],
        fingerprint: str,
        artifacts: tuple[NewArtifact, ...],
        was_waiting: bool = False,
    ) -> Write: ...

    async def context(
        self,
        state: FlowState,
        index: int,
        attempt: int,
        input_hashes: Sequence[str],
        params: Mapping[str, JsonValue] | None = None,
        phase: str = "",
    ) -> StepContext: ...

    def remember(self, artifact_hash: str, payload: JsonValue) -> None: ...

    def compensation_type(self, init: FlowInitialized, index: int) -> StepType: ...

    def started(self, init: FlowInitialized, index: int, attempt: int) -> StepStarted: ...

    def command(self, generation: int, index: int, attempt: int, kind: str) -> str: ...
