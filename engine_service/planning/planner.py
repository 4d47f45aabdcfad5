"""What to append for each decision: events, artifacts, status and the command id.

Running a step happens here (through :mod:`engine_service.steps.executor`): its context is built
from the replayed state and the flow's artifacts, and its outcome becomes StepSignal/StepFinished
(+ output artifacts, + FlowCompleted after the last step) or StepFailed + FlowFailed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from engine_service.core import decide as plan
from engine_service.core.events import (
    EngineEvent,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    StepAttemptFailed,
    StepFailed,
    StepFinished,
    StepSignal,
    StepStarted,
)
from engine_service.core.ids import command_id
from engine_service.core.replay import FlowState
from engine_service.core.step_inputs import finished_inputs_of, init_of, received_and_covered
from engine_service.core.writes import Suspend, Write, utc_now
from engine_service.definitions.definition import FlowDefinition
from engine_service.fingerprint import (
    ENGINE_VERSION,
    failed_step_fingerprint,
    flow_fingerprint,
    step_fingerprint,
)
from engine_service.planning import compensation, waits
from engine_service.planning.artifacts import ArtifactCache
from engine_service.planning.step_binding import bind_step_types
from engine_service.planning.step_start import started_event
from engine_service.planning.when import plan_condition
from engine_service.steps.builtin import is_builtin, parse_time
from engine_service.steps.context import StepContext, StepFailure
from engine_service.steps.executor import COMMIT_INTERRUPTED, Outcome, execute_attempt
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.retry import STEP_TIMEOUT_ERROR_TYPE as STEP_TIMEOUT
from engine_service.steps.retry import StepDefaults
from flowledger.canonical import JsonValue
from flowledger.errors import InternalError
from flowledger_core.domain import FlowStatus, NewArtifact


class WritePlanner:
    """Plans the writes of one flow. ``definition`` (optional) supplies step functions bound to
    it; otherwise the steps recorded in FlowInitialized are resolved in ``registry``."""

    def __init__(
        self,
        flow_id: str,
        namespace: str,
        definition: FlowDefinition | None,
        registry: StepRegistry,
        artifacts: ArtifactCache,
        defaults: StepDefaults | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        inline_wait_ms: int = 1000,
    ) -> None:
        self.flow_id = flow_id
        self._defaults = defaults or StepDefaults()
        self.namespace = namespace
        self._definition = definition
        self._registry = registry
        self._artifacts = artifacts
        self._types: tuple[StepType, ...] | None = None
        self._compensations: dict[int, StepType] = {}
        self.clock = clock
        self.inline_wait_ms = inline_wait_ms
        # Attempts whose StepStarted this planner's writes recorded: a commit step runs only
        # in the run that started it (decision 0014).
        self.started_here: set[tuple[int, int]] = set()

    def applied(self, write: Write) -> None:
        """Note a write the store applied."""
        for event in write.events:
            if isinstance(event, StepStarted):
                self.started_here.add((event.index, event.attempt))

    async def plan(
        self, state: FlowState, action: plan.Action, generation: int, *, chain: bool = False
    ) -> Write | Suspend:
        """The write for ``action`` (or Suspend: nothing to write, the flow waits). With
        ``chain``, a step that finishes and is not the last also starts the next one in the
        same append (StepFinished + StepStarted): one round trip less per step, and the log is
        the same as two appends would leave."""
        init = init_of(state)
        # Checked before any write, StepStarted included: a run that cannot execute the flow
        # faithfully (other scheme, other definition, missing types) must not touch its log.
        self._step_types(init)
        match action:
            case plan.StartStep(index, attempt):
                if init.steps[index].when is not None:
                    skip = await plan_condition(self, state, index, attempt, generation, chain)
                    if skip is not None:
                        return skip
                return Write(
                    (self.started(init, index, attempt),),
                    self.command(generation, index, attempt, "started"),
                )
            case plan.RunStep(index, attempt):
                if is_builtin(init.steps[index].type):
                    return await waits.plan_wait(self, state, index, attempt, generation, chain)
                return await self._run_step(state, init, index, attempt, generation, chain)
            case plan.CompleteFlow():
                return Write(
                    (FlowCompleted(flow_fingerprint(state.step_fingerprints)),),
                    self.command(generation, len(state.steps), 0, "completed"),
                    new_status=FlowStatus.COMPLETED,
                )
            case plan.FailFlow(index):
                step = state.steps[index]
                return Write(
                    (FlowFailed(step.step_id, index, step.reason or "", step.error_type or ""),),
                    self.command(generation, index, step.attempt, "flow-failed"),
                    new_status=FlowStatus.FAILED,
                )
            case plan.StartCompensation() | plan.RunCompensation() | plan.FinishCancel():
                return await compensation.plan_compensation(self, state, action, generation)
        raise InternalError(f"no write planned for {action!r}")

    async def _run_step(
        self,
        state: FlowState,
        init: FlowInitialized,
        index: int,
        attempt: int,
        generation: int,
        chain: bool,
    ) -> Write:
        step_type = self._step_types(init)[index]
        spec = init.steps[index]
        if spec.commit and (index, attempt) not in self.started_here:
            # Started by a run that is gone: its side effect may have happened. Never again.
            interrupted = StepFailure(
                f"commit step {spec.id!r} attempt {attempt} was interrupted; it is not run again",
                COMMIT_INTERRUPTED,
            )
            return self.outcome_write(state, index, attempt, generation, chain,
                                      Outcome(failure=interrupted))
        input_hashes, _ = received_and_covered(state, init, index)
        ctx = await self.context(state, index, attempt, input_hashes)
        timeout_ms = spec.timeout_ms if spec.timeout_ms is not None else self._defaults.timeout_ms
        left_ms = self._left_ms(state, index)
        if left_ms is not None:
            if left_ms <= 0:
                late = StepFailure("the step timed out before this attempt", STEP_TIMEOUT)
                return self.outcome_write(
                    state, index, attempt, generation, chain, Outcome(failure=late)
                )
            timeout_ms = left_ms if timeout_ms is None else min(timeout_ms, left_ms)
        outcome: Outcome = await execute_attempt(step_type, ctx, timeout_ms)
        return self.outcome_write(state, index, attempt, generation, chain, outcome)

    def outcome_write(
        self,
        state: FlowState,
        index: int,
        attempt: int,
        generation: int,
        chain: bool,
        outcome: Outcome,
        prefix: Sequence[EngineEvent] = (),
    ) -> Write:
        """The write recording ``outcome`` of step ``index`` attempt ``attempt`` (a function's,
        an external worker's or a wait's), after the ``prefix`` events."""
        init = init_of(state)
        spec = init.steps[index]
        was_waiting = state.steps[index].waiting
        _, fingerprint_inputs = received_and_covered(state, init, index)
        events: list[EngineEvent] = list(prefix)
        if outcome.failure is not None:
            failure = outcome.failure
            policy = spec.retry if spec.retry is not None else self._defaults.retry
            delay_ms = policy.delay_ms(attempt)
            left_ms = self._left_ms(state, index)
            if left_ms is not None and left_ms <= delay_ms:
                # No time for another attempt: the step as a whole timed out.
                failure = StepFailure(
                    f"step {spec.id!r} timed out after {spec.step_timeout_ms} ms "
                    f"(last attempt: {failure.error_type}: {failure.reason})",
                    STEP_TIMEOUT,
                )
            final = spec.commit or failure.error_type == STEP_TIMEOUT
            if policy.retries(attempt, failure.error_type) and not final:
                events.append(
                    StepAttemptFailed(
                        spec.id, index, attempt, failure.reason, failure.error_type, delay_ms
                    )
                )
                command = self.command(generation, index, attempt, "attempt-failed")
                if delay_ms > self.inline_wait_ms:
                    # A long backoff is a durable timer: the flow waits, holding no lease.
                    wake = self.clock() + timedelta(milliseconds=delay_ms)
                    return Write(tuple(events), command, new_status=FlowStatus.WAITING,
                                 wake_at=wake)
                status = FlowStatus.RUNNING if was_waiting else None
                return Write(tuple(events), command, new_status=status)
            if spec.continue_on_error:
                failed_fp = failed_step_fingerprint(
                    step_id=spec.id,
                    input_hashes=fingerprint_inputs,
                    params=state.params_of(index),
                    definition_hash=init.definition_hash,
                    error_type=failure.error_type,
                )
                events.append(
                    StepFailed(spec.id, index, attempt, failure.reason, failure.error_type,
                               failed_fp)
                )
                return self.after_step(
                    state, init, index, attempt, generation, chain, events, failed_fp, (),
                    was_waiting,
                )
            events.append(StepFailed(spec.id, index, attempt, failure.reason, failure.error_type))
            command = self.command(generation, index, attempt, "failed")
            if compensation.pending_after_failure(state, index):
                # The flow compensates before it fails (decision 0014).
                return Write(tuple(events), command, new_status=FlowStatus.RUNNING)
            events.append(FlowFailed(spec.id, index, failure.reason, failure.error_type))
            return Write(tuple(events), command, new_status=FlowStatus.FAILED)
        fingerprint_inputs = finished_inputs_of(state, index)
        fingerprint = step_fingerprint(
            step_id=spec.id,
            input_hashes=fingerprint_inputs,
            params=state.params_of(index),
            definition_hash=init.definition_hash,
            engine_version=ENGINE_VERSION,
        )
        events.extend(StepSignal(spec.id, index, s.name, s.payload) for s in outcome.signals)
        finished_at = len(events)
        output_hashes = outcome.output_hashes or tuple(o.hash for o in outcome.outputs)
        events.append(
            StepFinished(spec.id, index, attempt, fingerprint_inputs, output_hashes, fingerprint)
        )
        artifacts: dict[str, NewArtifact] = {}
        for output in outcome.outputs:
            self._artifacts.put(output.hash, output.payload)
            # Equal outputs are one artifact (content-addressed): send each hash once.
            artifacts.setdefault(
                output.hash,
                NewArtifact(output.hash, "step_output", output.payload_json, None, finished_at),
            )
        return self.after_step(
            state, init, index, attempt, generation, chain, events, fingerprint,
            tuple(artifacts.values()), was_waiting,
        )

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
    ) -> Write:
        """The step's closing events, then FlowCompleted (last step) or the next StepStarted."""
        # A step that waited leaves the flow RUNNING again (clearing its wake time and queue).
        new_status = FlowStatus.RUNNING if was_waiting else None
        if index == len(init.steps) - 1:
            # The last step: completing in the same transaction saves a round trip and leaves
            # no window in which every step finished but the flow is not completed.
            events.append(FlowCompleted(flow_fingerprint([*state.step_fingerprints, fingerprint])))
            new_status = FlowStatus.COMPLETED
        elif chain and init.steps[index + 1].when is None:
            # (A step with a condition is started by StartStep, which evaluates it.)
            # The command id stays that of the StepFinished: whichever form a writer chose,
            # step ``index`` attempt ``attempt`` can be recorded finished only once.
            following = state.steps[index + 1]
            events.append(self.started(init, index + 1, following.attempt + 1))
        return Write(
            tuple(events),
            self.command(generation, index, attempt, "finished"),
            artifacts,
            new_status,
        )

    async def context(
        self,
        state: FlowState,
        index: int,
        attempt: int,
        input_hashes: Sequence[str],
        params: Mapping[str, JsonValue] | None = None,
        phase: str = "",
    ) -> StepContext:
        """What step ``index`` sees (a compensation passes its own ``params`` and ``phase``)."""
        init = init_of(state)
        earlier = state.steps[:index]
        wanted = [init.input_hash, *input_hashes]
        if init.variables_hash:
            wanted.append(init.variables_hash)
        for step in earlier:
            wanted.extend(step.output_hashes)
        await self._artifacts.values(wanted)  # one fetch for whatever is not cached yet
        flow_input = (await self._artifacts.values([init.input_hash]))[0].payload
        variables: JsonValue = {}
        if init.variables_hash:
            variables = (await self._artifacts.values([init.variables_hash]))[0].payload
        return StepContext(
            flow_id=self.flow_id,
            namespace=self.namespace,
            step_id=init.steps[index].id,
            index=index,
            attempt=attempt,
            inputs=await self._artifacts.values(input_hashes),
            params=state.params_of(index) if params is None else params,
            flow_input=flow_input,
            variables=variables if isinstance(variables, dict) else {},
            results={s.step_id: await self._artifacts.values(s.output_hashes) for s in earlier},
            phase=phase,
        )

    async def payloads(self, hashes: Sequence[str]) -> list[JsonValue]:
        return [a.payload for a in await self._artifacts.values(hashes)]

    def remember(self, artifact_hash: str, payload: JsonValue) -> None:
        self._artifacts.put(artifact_hash, payload)

    @property
    def defaults(self) -> StepDefaults:
        return self._defaults

    def compensation_type(self, init: FlowInitialized, index: int) -> StepType:
        if not self._compensations:
            definition = self._definition or FlowDefinition(
                init.definition_name, init.steps, init.definition_version
            )
            self._compensations = definition.compensation_types(self._registry)
        return self._compensations[index]

    def _step_types(self, init: FlowInitialized) -> tuple[StepType, ...]:
        """Resolved when a step first runs, so that reading a flow never needs its types."""
        if self._types is None:
            self._types = bind_step_types(self.flow_id, init, self._definition, self._registry)
        return self._types

    def started(self, init: FlowInitialized, index: int, attempt: int) -> StepStarted:
        return started_event(init, index, attempt, self.clock)

    def _left_ms(self, state: FlowState, index: int) -> int | None:
        """Milliseconds left before the step's deadline (None: it has none)."""
        deadline = state.steps[index].deadline
        if deadline is None:
            return None
        return int((parse_time(deadline) - self.clock()).total_seconds() * 1000)

    def command(self, generation: int, index: int, attempt: int, kind: str) -> str:
        return command_id(self.flow_id, generation, index, attempt, kind)
