"""A step's StepStarted: what a run records before it runs an attempt.

Shared by the planner (every attempt) and the start of a flow, whose first StepStarted can go
out with FlowInitialized in the create call (decision 0019).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from engine_service.core.events import FlowInitialized, StepStarted
from engine_service.steps.builtin import format_time


def started_event(
    init: FlowInitialized, index: int, attempt: int, clock: Callable[[], datetime]
) -> StepStarted:
    """StepStarted; the first attempt of a step with a step timeout records its deadline."""
    spec = init.steps[index]
    deadline = None
    if spec.step_timeout_ms is not None and attempt == 1:
        deadline = format_time(clock() + timedelta(milliseconds=spec.step_timeout_ms))
    return StepStarted(spec.id, index, attempt, deadline)


def first_started(init: FlowInitialized, clock: Callable[[], datetime]) -> StepStarted | None:
    """The first step's StepStarted, to record with FlowInitialized by a caller that runs the
    flow at once (as ``run_to_end`` chains the next StepStarted to a StepFinished); None when
    the step must be started by StartStep: it has a condition (StartStep evaluates it), or it
    is a commit step (at most once: only the run that records its start may run it)."""
    first = init.steps[0] if init.steps else None
    if first is None or first.when is not None or first.commit:
        return None
    return started_event(init, 0, 1, clock)
