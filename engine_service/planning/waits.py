"""The writes of the engine's own steps (``wait``, ``signal``, ``task``): durable waits.

A running built-in step first records that it waits (TimerStarted, or TaskScheduled for a task)
in an append that sets the flow WAITING, with the time engines may claim it again (``wake_at``)
and, for a task, the queue workers claim it from. The run then lets go of the flow
(:class:`~engine_service.core.writes.Suspend`). Whoever resumes it replays the log and plans again:

* a ``wait`` whose time has come records TimerFired + StepFinished (its inputs pass through);
* a ``signal`` step finds its signal pending (SignalFlow recorded it, before or during the
  wait) and finishes with the payload as output; past its timeout it records TimerFired and
  fails (``SignalTimeout``) or outputs its ``default``;
* a ``task`` is finished by its worker (:mod:`engine_service.run.tasks`); past its timeout the
  attempt records TimerFired and fails with ``Timeout`` (retried under the step's policy).

The current time comes from the planner's clock and is recorded (``fire_at``), never recomputed
on replay. See docs/decisions/0013-durable-waits.md.
"""

from __future__ import annotations

from datetime import datetime

from engine_service.core.events import EngineEvent, TaskScheduled, TimerFired, TimerStarted
from engine_service.core.replay import FlowState
from engine_service.core.step_inputs import inputs_of
from engine_service.core.writes import Suspend, Write
from engine_service.planning.step_planner import StepPlanner
from engine_service.steps.builtin import (
    SIGNAL,
    SIGNAL_TIMEOUT_ERROR,
    TASK,
    WAIT,
    deadline,
    parse_time,
    task_id,
    wait_fires_at,
)
from engine_service.steps.context import StepFailure
from engine_service.steps.executor import Outcome, prepare
from engine_service.steps.retry import TIMEOUT_ERROR_TYPE
from flowledger.errors import InternalError
from flowledger_core.domain import FlowStatus


async def plan_wait(
    planner: StepPlanner,
    state: FlowState,
    index: int,
    attempt: int,
    generation: int,
    chain: bool,
) -> Write | Suspend:
    assert state.init is not None
    spec = state.init.steps[index]
    step = state.steps[index]
    params = state.params_of(index)
    now = planner.clock()
    fire_at = None if step.fire_at is None else parse_time(step.fire_at)
    due = fire_at is not None and fire_at <= now

    pending = state.consumed_signal(index)  # a signal step's signal, before its timeout
    if pending is not None:
        # The payload is the step's one output, and an input of its fingerprint
        # (planner.finished_inputs_of).
        outcome = Outcome(output_hashes=(pending.payload_hash,))
        return planner.outcome_write(state, index, attempt, generation, chain, outcome)
    if not step.waiting:
        return _begin(planner, state, index, attempt, generation, now)
    if not (due or step.timer_fired):
        return Suspend(fire_at)

    fired: list[EngineEvent] = [] if step.timer_fired else [TimerFired(spec.id, index, attempt)]
    if spec.type == WAIT:

        outcome = Outcome(output_hashes=inputs_of(state, index))
    elif spec.type == SIGNAL:
        outcome = _signal_timeout(planner, params)
    elif spec.type == TASK:
        seconds = params.get("timeout_seconds")
        outcome = Outcome(
            failure=StepFailure(
                f"no worker completed task {step.task_id} within {seconds} s", TIMEOUT_ERROR_TYPE
            )
        )
    else:  # pragma: no cover - is_builtin() guards the call
        raise InternalError(f"step type {spec.type!r} is not a built-in wait")
    return planner.outcome_write(state, index, attempt, generation, chain, outcome, prefix=fired)


def _begin(
    planner: StepPlanner,
    state: FlowState,
    index: int,
    attempt: int,
    generation: int,
    now: datetime,
) -> Write:
    """The append that starts the wait: the flow becomes WAITING (and lets go of its lease)."""
    assert state.init is not None
    spec = state.init.steps[index]
    params = state.params_of(index)
    command = planner.command(generation, index, attempt, "wait")
    if spec.type == TASK:
        fire_at = deadline(params, "timeout_seconds", now)
        queue = str(params["queue"])
        task = TaskScheduled(
            spec.id, index, attempt, queue, task_id(planner.flow_id, generation, index, attempt),
            fire_at,
        )  # fmt: skip
        return Write(
            (task,), command, new_status=FlowStatus.WAITING,
            wake_at=None if fire_at is None else parse_time(fire_at), task_queue=queue,
        )  # fmt: skip
    fire_at = wait_fires_at(params, now) if spec.type == WAIT else deadline(
        params, "timeout_seconds", now
    )
    return Write(
        (TimerStarted(spec.id, index, attempt, fire_at),), command,
        new_status=FlowStatus.WAITING, wake_at=None if fire_at is None else parse_time(fire_at),
    )  # fmt: skip


def _signal_timeout(planner: StepPlanner, params: dict[str, object] | object) -> Outcome:
    assert isinstance(params, dict)
    if params.get("on_timeout") == "default":
        artifact = prepare(params.get("default"))
        planner.remember(artifact.hash, artifact.payload)
        return Outcome(outputs=(artifact,))
    return Outcome(
        failure=StepFailure(
            f"no signal {params['name']!r} arrived within {params.get('timeout_seconds')} s",
            SIGNAL_TIMEOUT_ERROR,
        )
    )
