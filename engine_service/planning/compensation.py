"""Saga compensation and the end of a cancelled flow (decision 0014).

When a step fails for good (and the flow does not continue after it), or CancelFlow asked for
the flow to stop, no further step starts: the compensations of the finished steps that declare
one run in reverse order, each as CompensationStarted, then CompensationFinished or
CompensationFailed (retried under the compensated step's retry policy, like the step). A
compensation that fails for good is recorded and the others still run. Then the flow ends:
FlowFailed (status FAILED) or FlowCancelled (status CANCELLED).

A compensation is an ordinary step function: it receives the compensated step's outputs as its
inputs, its own params, and ``ctx.phase == "compensate"`` (so its idempotency key differs from
the step's).
"""

from __future__ import annotations

from engine_service.core import decide as plan
from engine_service.core.events import (
    CompensationFailed,
    CompensationFinished,
    CompensationStarted,
    FlowCancelled,
)
from engine_service.core.replay import FlowState, StepStatus
from engine_service.core.writes import Write
from engine_service.planning.step_planner import StepPlanner
from engine_service.steps.executor import execute_attempt
from flowledger_core.domain import FlowStatus, NewArtifact

PHASE = "compensate"


def pending_after_failure(state: FlowState, failed_index: int) -> bool:
    """Whether a step before ``failed_index`` finished and declares a compensation."""
    assert state.init is not None
    return any(
        state.steps[i].status is StepStatus.FINISHED_OK and state.init.steps[i].compensate
        for i in range(failed_index)
    )


async def plan_compensation(
    planner: StepPlanner, state: FlowState, action: plan.Action, generation: int
) -> Write:
    assert state.init is not None
    match action:
        case plan.FinishCancel():
            return Write(
                (FlowCancelled(state.cancel_reason),),
                planner.command(generation, len(state.steps), 0, "cancelled"),
                new_status=FlowStatus.CANCELLED,
            )
        case plan.StartCompensation(index, attempt):
            spec = state.init.steps[index]
            return Write(
                (CompensationStarted(spec.id, index, attempt),),
                planner.command(generation, index, attempt, "comp-started"),
                # A flow cancelled while WAITING resumes here (and leaves its wait).
                new_status=FlowStatus.RUNNING,
            )
        case plan.RunCompensation(index, attempt):
            return await _run(planner, state, index, attempt, generation)
    raise AssertionError(f"not a compensation action: {action!r}")


async def _run(
    planner: StepPlanner, state: FlowState, index: int, attempt: int, generation: int
) -> Write:
    assert state.init is not None
    spec = state.init.steps[index]
    assert spec.compensate is not None
    step_type = planner.compensation_type(state.init, index)
    step = state.steps[index]
    ctx = await planner.context(
        state, index, attempt, step.output_hashes, spec.compensate.params, PHASE
    )
    timeout_ms = spec.timeout_ms if spec.timeout_ms is not None else planner.defaults.timeout_ms
    outcome = await execute_attempt(step_type, ctx, timeout_ms)
    if outcome.failure is None:
        artifacts: dict[str, NewArtifact] = {}
        for output in outcome.outputs:
            planner.remember(output.hash, output.payload)
            artifacts.setdefault(
                output.hash,
                NewArtifact(output.hash, "compensation_output", output.payload_json, None, 0),
            )
        finished = CompensationFinished(
            spec.id, index, attempt, tuple(o.hash for o in outcome.outputs)
        )
        return Write(
            (finished,),
            planner.command(generation, index, attempt, "comp-finished"),
            tuple(artifacts.values()),
        )
    failure = outcome.failure
    policy = spec.retry if spec.retry is not None else planner.defaults.retry
    delay = policy.delay_ms(attempt) if policy.retries(attempt, failure.error_type) else None
    return Write(
        (CompensationFailed(spec.id, index, attempt, failure.reason, failure.error_type, delay),),
        planner.command(generation, index, attempt, "comp-failed"),
    )
