"""The write of a step with a ``when`` condition, planned before it starts (decision 0010).

False: StepSkipped (with its own fingerprint), then what follows a step. An expression that
fails to evaluate: StepStarted + StepFailed (error type ``ConditionError``), handled like any
failure (compensation, continue_on_error). True: None, and the step starts.
"""

from __future__ import annotations

from engine_service.core.events import EngineEvent, StepSkipped
from engine_service.core.replay import FlowState, replay
from engine_service.core.step_inputs import fingerprint_inputs_of, inputs_of
from engine_service.core.writes import Write
from engine_service.definitions.conditions import ConditionError, holds
from engine_service.fingerprint import skipped_step_fingerprint
from engine_service.planning.step_planner import StepPlanner
from engine_service.steps.context import StepFailure
from engine_service.steps.executor import Outcome
from flowledger.canonical import JsonValue


async def plan_condition(
    planner: StepPlanner,
    state: FlowState,
    index: int,
    attempt: int,
    generation: int,
    chain: bool,
) -> Write | None:

    init = state.init
    assert init is not None
    spec = init.steps[index]
    assert spec.when is not None
    ctx = await planner.context(state, index, attempt, inputs_of(state, index))
    data: JsonValue = {
        "input": ctx.flow_input,
        "variables": dict(ctx.variables),
        "results": {k: [a.payload for a in v] for k, v in ctx.results.items()},
    }
    try:
        if holds(spec.when, data):
            return None
    except ConditionError as exc:
        reason = f"when {spec.when!r}: {exc}"
        started = planner.started(init, index, attempt)
        return planner.outcome_write(
            replay([(state.version + 1, started)], state), index, attempt, generation,
            chain, Outcome(failure=StepFailure(reason, "ConditionError")), prefix=[started],
        )  # fmt: skip
    fingerprint = skipped_step_fingerprint(
        step_id=spec.id,
        input_hashes=fingerprint_inputs_of(state, index),
        params=state.params_of(index),
        definition_hash=init.definition_hash,
    )
    events: list[EngineEvent] = [StepSkipped(spec.id, index, fingerprint)]
    return planner.after_step(
        state, init, index, attempt, generation, chain, events, fingerprint, ()
    )
