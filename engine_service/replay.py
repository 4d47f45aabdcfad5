"""Flow state as a pure fold over the events: no I/O, no clock, no randomness.

``replay(events)`` and ``replay(tail, start=snapshot_state)`` give the same :class:`FlowState`
as the live engine; a log that breaks the state machine (a step finished that never started, a
gap in versions) raises InternalError, because the log is the source of truth and must not be
guessed at.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from engine_service.events import (
    EngineEvent,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    OpaqueEvent,
    PropertyPreferenceAssigned,
    StepAttemptFailed,
    StepFailed,
    StepFinished,
    StepSignal,
    StepSkipped,
    StepStarted,
    decode,
    to_payload,
)
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import InternalError
from store_service.domain import EventType, StoredEvent

STATE_SCHEMA = "flowledger.flow-state/2"
"""Tag of the snapshot JSON; a snapshot with another tag is ignored and the log replayed.
(/2 added ``overrides``: an engine that knew only /1 must not resume from a /2 snapshot.)"""


class StepStatus(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    FINISHED_OK = "FinishedOk"
    FAILED = "Failed"
    SKIPPED = "Skipped"


@dataclass(frozen=True)
class StepState:
    step_id: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    input_hashes: tuple[str, ...] = ()
    output_hashes: tuple[str, ...] = ()
    fingerprint: str | None = None
    reason: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class FlowState:
    """Where a flow is. ``cursor`` is the index of the next step to run (of the running one
    while it runs); ``version`` is that of the last event folded in."""

    version: int = 0
    init: FlowInitialized | None = None
    steps: tuple[StepState, ...] = ()
    cursor: int = 0
    completed: bool = False
    failed: bool = False
    flow_fingerprint: str | None = None
    # Params assigned by PropertyPreferenceAssigned events, by step id (they replace those of
    # FlowInitialized): what the step runs with and what its fingerprint hashes.
    overrides: Mapping[str, Mapping[str, JsonValue]] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.completed or self.failed

    @property
    def step_fingerprints(self) -> tuple[str, ...]:
        return tuple(s.fingerprint for s in self.steps if s.fingerprint is not None)

    def step(self, step_id: str) -> StepState | None:
        for state in self.steps:
            if state.step_id == step_id:
                return state
        return None

    def params_of(self, index: int) -> Mapping[str, JsonValue]:
        """The effective params of step ``index``: an override if one was assigned, else
        those FlowInitialized recorded."""
        if self.init is None:
            raise InternalError("the flow has no FlowInitialized")
        spec = self.init.steps[index]
        return self.overrides.get(spec.id, spec.params)

    def to_json(self) -> str:
        """Canonical JSON of the state (what a snapshot stores)."""
        document: dict[str, Any] = {
            "schema": STATE_SCHEMA,
            "version": self.version,
            "init": None if self.init is None else to_payload(self.init),
            "steps": [
                {
                    "step_id": s.step_id,
                    "status": s.status.value,
                    "attempt": s.attempt,
                    "input_hashes": list(s.input_hashes),
                    "output_hashes": list(s.output_hashes),
                    "fingerprint": s.fingerprint,
                    "reason": s.reason,
                    "error_type": s.error_type,
                }
                for s in self.steps
            ],
            "cursor": self.cursor,
            "completed": self.completed,
            "failed": self.failed,
            "flow_fingerprint": self.flow_fingerprint,
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
        }
        return canonical_bytes(document).decode("utf-8")

    @classmethod
    def from_json(cls, text: str) -> FlowState:
        """InternalError (reason BAD_SNAPSHOT) when the text is not a state of this schema."""
        try:
            d = parse_json(text)
            if d.get("schema") != STATE_SCHEMA:
                raise ValueError(f"schema is {d.get('schema')!r}, expected {STATE_SCHEMA!r}")
            init: FlowInitialized | None = None
            if d["init"] is not None:
                decoded = decode(EventType.FLOW_INITIALIZED, canonical_bytes(d["init"]).decode())
                assert isinstance(decoded, FlowInitialized)
                init = decoded
            steps = tuple(
                StepState(
                    step_id=s["step_id"],
                    status=StepStatus(s["status"]),
                    attempt=int(s["attempt"]),
                    input_hashes=tuple(s["input_hashes"]),
                    output_hashes=tuple(s["output_hashes"]),
                    fingerprint=s["fingerprint"],
                    reason=s["reason"],
                    error_type=s["error_type"],
                )
                for s in d["steps"]
            )
            return cls(
                version=int(d["version"]),
                init=init,
                steps=steps,
                cursor=int(d["cursor"]),
                completed=bool(d["completed"]),
                failed=bool(d["failed"]),
                flow_fingerprint=d["flow_fingerprint"],
                overrides={str(k): dict(v) for k, v in d["overrides"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as exc:
            raise InternalError(
                f"unusable flow state snapshot: {exc}", reason="BAD_SNAPSHOT"
            ) from exc


def apply(state: FlowState, event: EngineEvent, version: int) -> FlowState:
    """The state after ``event``, which must be the event at ``version`` = state.version + 1."""
    if version != state.version + 1:
        _corrupt(state, f"event version {version} does not follow {state.version}")
    at = replace(state, version=version)
    if isinstance(event, OpaqueEvent):
        return at
    if isinstance(event, FlowInitialized):
        if state.init is not None:
            _corrupt(state, "FlowInitialized twice")
        return replace(at, init=event, steps=tuple(StepState(i) for i in event.step_ids))
    if state.init is None:
        _corrupt(state, f"{type(event).__name__} before FlowInitialized")
    if state.terminal:
        _corrupt(state, f"{type(event).__name__} after the flow ended")
    match event:
        case StepStarted():
            step = _step_at(state, event.step_id, event.index)
            if event.index != state.cursor or step.status not in (
                StepStatus.PENDING,
                StepStatus.RUNNING,
            ):
                _corrupt(state, f"StepStarted for step {event.index} at cursor {state.cursor}")
            running = replace(step, status=StepStatus.RUNNING, attempt=event.attempt)
            return _set_step(at, event.index, running)
        case StepFinished():
            step = _running(state, event.step_id, event.index)
            done = replace(
                step,
                status=StepStatus.FINISHED_OK,
                attempt=event.attempt,
                input_hashes=event.input_hashes,
                output_hashes=event.output_hashes,
                fingerprint=event.fingerprint,
            )
            return replace(_set_step(at, event.index, done), cursor=event.index + 1)
        case StepFailed():
            step = _running(state, event.step_id, event.index)
            failed = replace(
                step,
                status=StepStatus.FAILED,
                attempt=event.attempt,
                reason=event.reason,
                error_type=event.error_type,
                fingerprint=event.fingerprint,
            )
            if state.init.steps[event.index].continue_on_error:
                # The flow goes on with the next step (decision 0010).
                return replace(_set_step(at, event.index, failed), cursor=event.index + 1)
            return _set_step(at, event.index, failed)
        case StepAttemptFailed():
            step = _running(state, event.step_id, event.index)
            if event.attempt != step.attempt:
                _corrupt(state, f"attempt {event.attempt} failed while {step.attempt} ran")
            # Pending again: the next decision starts attempt + 1.
            retry = replace(
                step,
                status=StepStatus.PENDING,
                reason=event.reason,
                error_type=event.error_type,
            )
            return _set_step(at, event.index, retry)
        case StepSkipped():
            step = _step_at(state, event.step_id, event.index)
            if event.index != state.cursor or step.status is not StepStatus.PENDING:
                _corrupt(state, f"StepSkipped for step {event.index} at cursor {state.cursor}")
            skipped = replace(step, status=StepStatus.SKIPPED, fingerprint=event.fingerprint)
            return replace(_set_step(at, event.index, skipped), cursor=event.index + 1)
        case StepSignal():
            _running(state, event.step_id, event.index)
            return at
        case PropertyPreferenceAssigned():
            overrides = dict(state.overrides)
            for step_id, params in event.params.items():
                target = state.step(step_id)
                if target is None or target.status is not StepStatus.PENDING:
                    what = "no such step" if target is None else target.status.value
                    _corrupt(state, f"params assigned to step {step_id!r} ({what})")
                overrides[step_id] = params
            return replace(at, overrides=overrides)
        case FlowCompleted():
            if any(not _done(state.init, i, s) for i, s in enumerate(state.steps)):
                _corrupt(state, "FlowCompleted before every step finished")
            return replace(at, completed=True, flow_fingerprint=event.flow_fingerprint)
        case FlowFailed():
            return replace(at, failed=True)
    _corrupt(state, f"unexpected event {event!r}")


def replay(events: Iterable[tuple[int, EngineEvent]], start: FlowState | None = None) -> FlowState:
    """Fold ``(version, event)`` pairs over ``start`` (an empty flow by default)."""
    state = start if start is not None else FlowState()
    for version, event in events:
        state = apply(state, event, version)
    return state


def replay_stored(events: Iterable[StoredEvent], start: FlowState | None = None) -> FlowState:
    """:func:`replay` over the store's events, decoding each."""
    return replay(((e.version, decode(e.type, e.payload_json)) for e in events), start)


def _done(init: FlowInitialized, index: int, step: StepState) -> bool:
    """Finished or skipped, or failed for good in a step the flow continues after."""
    return step.status in (StepStatus.FINISHED_OK, StepStatus.SKIPPED) or (
        step.status is StepStatus.FAILED and init.steps[index].continue_on_error
    )


def _step_at(state: FlowState, step_id: str, index: int) -> StepState:
    if not 0 <= index < len(state.steps) or state.steps[index].step_id != step_id:
        _corrupt(state, f"no step {step_id!r} at index {index}")
    return state.steps[index]


def _running(state: FlowState, step_id: str, index: int) -> StepState:
    step = _step_at(state, step_id, index)
    if step.status is not StepStatus.RUNNING:
        _corrupt(state, f"step {step_id!r} is {step.status.value}, not Running")
    return step


def _set_step(state: FlowState, index: int, step: StepState) -> FlowState:
    steps = list(state.steps)
    steps[index] = step
    return replace(state, steps=tuple(steps))


def _corrupt(state: FlowState, what: str) -> NoReturn:
    raise InternalError(
        f"flow log breaks the state machine at version {state.version + 1}: {what}",
        reason="INVALID_TRANSITION",
        metadata={"version": str(state.version + 1)},
    )
