"""What the engine does next, decided from the replayed state alone (pure).

The engine never remembers what it was doing: after every conflict, duplicate or restart it
re-reads the log, replays it and asks :func:`decide` again. That is what makes crash recovery and
several engines on one flow safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from engine_service.replay import FlowState, StepStatus


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
    """A step failed but FlowFailed is missing."""

    index: int


Action: TypeAlias = Initialize | StartStep | RunStep | CompleteFlow | FailFlow


def decide(state: FlowState) -> Action | None:
    """The next action, or None when the flow has ended."""
    if state.init is None:
        return Initialize()
    if state.terminal:
        return None
    if state.cursor >= len(state.steps):
        return CompleteFlow()
    step = state.steps[state.cursor]
    match step.status:
        case StepStatus.PENDING:
            return StartStep(state.cursor, step.attempt + 1)
        case StepStatus.RUNNING:
            return RunStep(state.cursor, step.attempt)
        case StepStatus.FAILED:
            return FailFlow(state.cursor)
        case StepStatus.FINISHED_OK | StepStatus.SKIPPED:  # pragma: no cover - cursor moved on
            raise AssertionError("cursor on a finished step")
