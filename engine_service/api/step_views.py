"""What DescribeFlow says of each step: its replayed status, refined by what the flow is doing.

The replay's :class:`~engine_service.core.replay.StepStatus` is what the engine decides with, and a
durable wait or the end of a flow does not change it: a ``signal`` step waiting for days is as
RUNNING as a function executing now, and the step a cancel interrupted stays RUNNING in a
CANCELLED flow. Readers need the difference, so the view (every client's) derives:

* WAITING, with what for (a signal's name, a task's queue) and until when (a ``wait`` step's
  time, a timeout), while the step's attempt waits durably (TimerStarted / TaskScheduled, its
  timer not fired) and no cancel or failure is under way;
* CANCELLED for the step that was in progress when the flow was cancelled;
* FAILED for a step left in progress by a flow that failed without a StepFailed of its own (the
  events-per-flow limit's FlowFailed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from engine_service.core.replay import FlowState, StepStatus
from engine_service.steps.builtin import SIGNAL, TASK, parse_time


class ViewStatus(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    FINISHED_OK = "FinishedOk"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    WAITING = "Waiting"
    CANCELLED = "Cancelled"


@dataclass(frozen=True)
class StepWait:
    signal_name: str = ""
    task_queue: str = ""
    until: datetime | None = None


def step_view_status(state: FlowState, index: int) -> tuple[ViewStatus, StepWait | None]:
    step = state.steps[index]
    status = ViewStatus[step.status.name]
    if step.status is not StepStatus.RUNNING:
        return status, None
    if state.cancelled:
        return ViewStatus.CANCELLED, None
    if state.failed:
        return ViewStatus.FAILED, None
    if not step.waiting or step.timer_fired or state.cancel_requested or state.failing:
        return status, None
    assert state.init is not None
    spec = state.init.steps[index]
    until = parse_time(step.fire_at) if step.fire_at is not None else None
    if spec.type == TASK:
        return ViewStatus.WAITING, StepWait(task_queue=step.task_queue or "", until=until)
    if spec.type == SIGNAL:
        name = str(state.params_of(index).get("name", ""))
        return ViewStatus.WAITING, StepWait(signal_name=name, until=until)
    return ViewStatus.WAITING, StepWait(until=until)
