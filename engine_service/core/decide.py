"""What the engine does next, decided from the replayed state alone (pure).

The engine never remembers what it was doing: after every conflict, duplicate or restart it
re-reads the log, replays it and asks :func:`decide` again. That is what makes crash recovery and
several engines on one flow safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from engine_service.core.replay import CompensationStatus, FlowState, StepStatus


@dataclass(frozen=True)
class Initialize:
    """No FlowInitialized yet (the flow record exists, the first append was lost)."""


@dataclass(frozen=True)
class StartStep:
    index: int
    attempt: int


@dataclass(frozen=True)
class RunStep:
    """Execute a started step. Also the recovery of a crash after StepStarted: the same attempt
    runs again (at least once), and its StepFinished command id is the one the crashed run
    would have used, so only one StepFinished can ever be recorded."""

    index: int
    attempt: int


@dataclass(frozen=True)
class CompleteFlow:
    """Every step finished but FlowCompleted is missing (written apart by an older engine)."""


@dataclass(frozen=True)
class FailFlow:
    """A step failed for good and every compensation has run: FlowFailed."""

    index: int


@dataclass(frozen=True)
class StartCompensation:
    """Record CompensationStarted for the finished step ``index`` (saga, reverse order)."""

    index: int
    attempt: int


@dataclass(frozen=True)
class RunCompensation:
    """Execute a started compensation (again, after a crash: at least once)."""

    index: int
    attempt: int


@dataclass(frozen=True)
class FinishCancel:
    """Cancelling was asked for and every compensation has run: FlowCancelled."""


Action: TypeAlias = (
    Initialize
    | StartStep
    | RunStep
    | CompleteFlow
    | FailFlow
    | StartCompensation
    | RunCompensation
    | FinishCancel
)


def decide(state: FlowState) -> Action | None:
    """The next action, or None when the flow has ended."""
    if state.init is None:
        return Initialize()
    if state.terminal:
        return None
    if state.cancel_requested or state.failing:
        # No step starts any more: undo the finished ones, latest first, then end the flow.
        compensation = _next_compensation(state)
        if compensation is not None:
            return compensation
        return FinishCancel() if state.cancel_requested else FailFlow(state.cursor)
    if state.cursor >= len(state.steps):
        return CompleteFlow()
    step = state.steps[state.cursor]
    match step.status:
        case StepStatus.PENDING:
            return StartStep(state.cursor, step.attempt + 1)
        case StepStatus.RUNNING:
            return RunStep(state.cursor, step.attempt)
        case StepStatus.FAILED | StepStatus.FINISHED_OK | StepStatus.SKIPPED:  # pragma: no cover
            raise AssertionError("cursor on an ended step")


def _next_compensation(state: FlowState) -> StartCompensation | RunCompensation | None:
    assert state.init is not None
    for index in range(len(state.steps) - 1, -1, -1):
        step = state.steps[index]
        if step.status is not StepStatus.FINISHED_OK or state.init.steps[index].compensate is None:
            continue
        match step.compensation:
            case CompensationStatus.RUNNING:
                return RunCompensation(index, step.compensation_attempt)
            case CompensationStatus.NONE | CompensationStatus.RETRYING:
                return StartCompensation(index, step.compensation_attempt + 1)
    return None
