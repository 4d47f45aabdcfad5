"""What to append for each decision: events, artifacts, status and the command id.

Running a step happens here (through :mod:`engine_service.executor`): its context is built from
the replayed state and the flow's artifacts, and its outcome becomes StepSignal/StepFinished
(+ output artifacts, + FlowCompleted after the last step) or StepFailed + FlowFailed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine_service import decide as plan
from engine_service.artifacts import ArtifactCache
from engine_service.conditions import ConditionError, holds
from engine_service.definition import FlowDefinition
from engine_service.events import (
    EngineEvent,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    StepAttemptFailed,
    StepFailed,
    StepFinished,
    StepSignal,
    StepSkipped,
    StepStarted,
)
from engine_service.executor import Outcome, execute_attempt
from engine_service.fingerprint import (
    ENGINE_VERSION,
    failed_step_fingerprint,
    flow_fingerprint,
    skipped_step_fingerprint,
    step_fingerprint,
)
from engine_service.ids import command_id
from engine_service.registry import StepRegistry, StepType
from engine_service.replay import FlowState
from engine_service.retry import StepDefaults
from engine_service.steps import StepContext
from flowledger.canonical import JsonValue
from flowledger.errors import FailedPrecondition, InternalError, InvalidArgument
from store_service.domain import FlowStatus, NewArtifact


@dataclass(frozen=True)
class Write:
    """One append: all or nothing."""

    events: tuple[EngineEvent, ...]
    command_id: str
    artifacts: tuple[NewArtifact, ...] = ()
    new_status: FlowStatus | None = None

    @property
    def retry_delay_ms(self) -> int:
        """The backoff to wait after this write (a StepAttemptFailed's delay), else 0."""
        return sum(e.delay_ms for e in self.events if isinstance(e, StepAttemptFailed))


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
    ) -> None:
        self.flow_id = flow_id
        self._defaults = defaults or StepDefaults()
        self.namespace = namespace
        self._definition = definition
        self._registry = registry
        self._artifacts = artifacts
        self._types: tuple[StepType, ...] | None = None

    async def plan(
        self, state: FlowState, action: plan.Action, generation: int, *, chain: bool = False
    ) -> Write:
        """The write for ``action``. With ``chain``, a step that finishes and is not the last
        also starts the next one in the same append (StepFinished + StepStarted): one round
        trip less per step, and the log is the same as two appends would leave."""
        init = _init_of(state)
        # Checked before any write, StepStarted included: a run that cannot execute the flow
        # faithfully (other scheme, other definition, missing types) must not touch its log.
        self._step_types(init)
        match action:
            case plan.StartStep(index, attempt):
                step_id = init.steps[index].id
                if init.steps[index].when is not None:
                    skip = await self._condition(state, init, index, attempt, generation, chain)
                    if skip is not None:
                        return skip
                return Write(
                    (StepStarted(step_id, index, attempt),),
                    self._command(generation, index, attempt, "started"),
                )
            case plan.RunStep(index, attempt):
                return await self._run_step(state, init, index, attempt, generation, chain)
            case plan.CompleteFlow():
                return Write(
                    (FlowCompleted(flow_fingerprint(state.step_fingerprints)),),
                    self._command(generation, len(state.steps), 0, "completed"),
                    new_status=FlowStatus.COMPLETED,
                )
            case plan.FailFlow(index):
                step = state.steps[index]
                return Write(
                    (FlowFailed(step.step_id, index, step.reason or "", step.error_type or ""),),
                    self._command(generation, index, step.attempt, "flow-failed"),
                    new_status=FlowStatus.FAILED,
                )
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
        input_hashes, fingerprint_inputs = _inputs(state, init, index)
        ctx = await self._context(state, init, index, attempt, input_hashes)
        timeout_ms = spec.timeout_ms if spec.timeout_ms is not None else self._defaults.timeout_ms
        outcome: Outcome = await execute_attempt(step_type, ctx, timeout_ms)
        if outcome.failure is not None:
            failure = outcome.failure
            policy = spec.retry if spec.retry is not None else self._defaults.retry
            if policy.retries(attempt, failure.error_type):
                return Write(
                    (
                        StepAttemptFailed(
                            spec.id,
                            index,
                            attempt,
                            failure.reason,
                            failure.error_type,
                            policy.delay_ms(attempt),
                        ),
                    ),
                    self._command(generation, index, attempt, "attempt-failed"),
                )
            if spec.continue_on_error:
                failed_fp = failed_step_fingerprint(
                    step_id=spec.id,
                    input_hashes=fingerprint_inputs,
                    params=state.params_of(index),
                    definition_hash=init.definition_hash,
                    error_type=failure.error_type,
                )
                failed = StepFailed(
                    spec.id, index, attempt, failure.reason, failure.error_type, failed_fp
                )
                return self._after_step(
                    state, init, index, attempt, generation, chain, [failed], failed_fp, ()
                )
            return Write(
                (
                    StepFailed(spec.id, index, attempt, failure.reason, failure.error_type),
                    FlowFailed(spec.id, index, failure.reason, failure.error_type),
                ),
                self._command(generation, index, attempt, "failed"),
                new_status=FlowStatus.FAILED,
            )
        fingerprint = step_fingerprint(
            step_id=spec.id,
            input_hashes=fingerprint_inputs,
            params=state.params_of(index),
            definition_hash=init.definition_hash,
            engine_version=ENGINE_VERSION,
        )
        events: list[EngineEvent] = [
            StepSignal(spec.id, index, s.name, s.payload) for s in outcome.signals
        ]
        finished_at = len(events)
        output_hashes = tuple(o.hash for o in outcome.outputs)
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
        return self._after_step(
            state,
            init,
            index,
            attempt,
            generation,
            chain,
            events,
            fingerprint,
            tuple(artifacts.values()),
        )

    def _after_step(
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
    ) -> Write:
        """The step's closing events, then FlowCompleted (last step) or the next StepStarted."""
        new_status = None
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
            events.append(StepStarted(following.step_id, index + 1, following.attempt + 1))
        return Write(
            tuple(events),
            self._command(generation, index, attempt, "finished"),
            artifacts,
            new_status,
        )

    async def _condition(
        self,
        state: FlowState,
        init: FlowInitialized,
        index: int,
        attempt: int,
        generation: int,
        chain: bool,
    ) -> Write | None:
        """The write of a step whose ``when`` is false (StepSkipped) or fails to evaluate
        (StepStarted + StepFailed + FlowFailed, error type ``ConditionError``); None when the
        condition holds and the step is to start."""
        spec = init.steps[index]
        assert spec.when is not None
        input_hashes, fingerprint_inputs = _inputs(state, init, index)
        ctx = await self._context(state, init, index, attempt, input_hashes)
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
            return Write(
                (
                    StepStarted(spec.id, index, attempt),
                    StepFailed(spec.id, index, attempt, reason, "ConditionError"),
                    FlowFailed(spec.id, index, reason, "ConditionError"),
                ),
                self._command(generation, index, attempt, "failed"),
                new_status=FlowStatus.FAILED,
            )
        fingerprint = skipped_step_fingerprint(
            step_id=spec.id,
            input_hashes=fingerprint_inputs,
            params=state.params_of(index),
            definition_hash=init.definition_hash,
        )
        events: list[EngineEvent] = [StepSkipped(spec.id, index, fingerprint)]
        return self._after_step(
            state, init, index, attempt, generation, chain, events, fingerprint, ()
        )

    async def _context(
        self,
        state: FlowState,
        init: FlowInitialized,
        index: int,
        attempt: int,
        input_hashes: Sequence[str],
    ) -> StepContext:
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
            params=state.params_of(index),
            flow_input=flow_input,
            variables=variables if isinstance(variables, dict) else {},
            results={s.step_id: await self._artifacts.values(s.output_hashes) for s in earlier},
        )

    def _step_types(self, init: FlowInitialized) -> tuple[StepType, ...]:
        """Resolved when a step first runs, so that reading a flow never needs its types."""
        if self._types is not None:
            return self._types
        if init.engine_version != ENGINE_VERSION:
            raise FailedPrecondition(
                f"flow {self.flow_id} was started under fingerprint scheme "
                f"{init.engine_version!r}; this engine computes {ENGINE_VERSION!r}",
                reason="ENGINE_VERSION_MISMATCH",
                metadata={"flow_id": self.flow_id, "engine_version": init.engine_version},
            )
        definition = self._definition
        if definition is not None and (
            definition.definition_hash != init.definition_hash or definition.steps != init.steps
        ):
            raise FailedPrecondition(
                f"the definition given is not the one flow {self.flow_id} started with",
                reason="DEFINITION_MISMATCH",
                metadata={"flow_id": self.flow_id},
            )
        if definition is None:
            definition = FlowDefinition(init.definition_name, init.steps, init.definition_version)
        try:
            self._types = definition.resolve(self._registry)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"flow {self.flow_id} cannot run in this engine: {exc.message}",
                reason="STEP_TYPES_UNAVAILABLE",
                metadata={"flow_id": self.flow_id},
                violations=exc.violations,
            ) from exc
        return self._types

    def _command(self, generation: int, index: int, attempt: int, kind: str) -> str:
        return command_id(self.flow_id, generation, index, attempt, kind)


def _inputs(
    state: FlowState, init: FlowInitialized, index: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What step ``index`` receives, and what its fingerprint hashes (the Source's adds the
    variables)."""
    if index == 0:
        received: tuple[str, ...] = (init.input_hash,)
        return received, received + ((init.variables_hash,) if init.variables_hash else ())
    received = state.steps[index - 1].output_hashes
    return received, received


def _init_of(state: FlowState) -> FlowInitialized:
    if state.init is None:
        raise InternalError("the flow has no FlowInitialized")
    return state.init
