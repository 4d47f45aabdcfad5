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

from engine_service.core.event_codec import decode
from engine_service.core.events import (
    CompensationFailed,
    CompensationFinished,
    CompensationStarted,
    EngineEvent,
    FlowCancelled,
    FlowCancelRequested,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    OpaqueEvent,
    PropertyPreferenceAssigned,
    SignalReceived,
    StepAttemptFailed,
    StepFailed,
    StepFinished,
    StepSignal,
    StepSkipped,
    StepStarted,
    TaskScheduled,
    TimerFired,
    TimerStarted,
)
from engine_service.steps.builtin import SIGNAL
from flowledger.canonical import JsonValue
from flowledger.errors import InternalError
from flowledger_core.domain import StoredEvent

STATE_SCHEMA = "flowledger.flow-state/3"
"""Tag of the snapshot JSON; a snapshot with another tag is ignored and the log replayed.
(/2 added ``overrides``, /3 waits, signals, compensations and cancels: an engine must not
resume from a snapshot of a later schema.)"""


class CompensationStatus(enum.Enum):
    NONE = ""
    RUNNING = "Running"
    RETRYING = "Retrying"  # an attempt failed; the next one is due
    DONE = "Done"
    FAILED = "Failed"  # for good; the other compensations still ran


@dataclass(frozen=True)
class PendingSignal:
    """A delivered signal no step has consumed yet."""

    name: str
    payload_hash: str
    request_id: str


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
    # The current attempt's wait (TimerStarted / TaskScheduled): deadline, fired, task.
    waiting: bool = False
    fire_at: str | None = None
    timer_fired: bool = False
    task_id: str | None = None
    task_queue: str | None = None
    compensation: CompensationStatus = CompensationStatus.NONE
    compensation_attempt: int = 0
    deadline: str | None = None  # of the whole step (its step timeout), from attempt 1


_NOT_WAITING: dict[str, Any] = {
    "waiting": False, "fire_at": None, "timer_fired": False, "task_id": None, "task_queue": None
}  # fmt: skip


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
    signals: tuple[PendingSignal, ...] = ()
    cancel_requested: bool = False
    cancel_reason: str = ""
    cancelled: bool = False

    @property
    def terminal(self) -> bool:
        return self.completed or self.failed or self.cancelled

    @property
    def failing(self) -> bool:
        """A step failed for good (not continued after): the flow compensates, then fails."""
        return self.cursor < len(self.steps) and self.steps[self.cursor].status is StepStatus.FAILED

    def pending_signal(self, name: str) -> PendingSignal | None:
        for signal in self.signals:
            if signal.name == name:
                return signal
        return None

    def consumes_signal(self, index: int) -> bool:
        """True when step ``index`` finishing now consumes a signal: a ``signal`` step whose
        timeout has not fired (after it, the step fails or outputs its ``default``)."""
        if self.init is None:
            return False
        return self.init.steps[index].type == SIGNAL and not self.steps[index].timer_fired

    def consumed_signal(self, index: int) -> PendingSignal | None:
        """The signal step ``index`` consumes if it finishes now (the first pending one of its
        name), None when it consumes none or none is pending. The one rule shared by the run
        (the payload is the step's output and an input of its fingerprint), the replay and
        verification."""
        if not self.consumes_signal(index):
            return None
        return self.pending_signal(str(self.params_of(index).get("name")))

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
            running = replace(
                step, status=StepStatus.RUNNING, attempt=event.attempt, **_NOT_WAITING,
                deadline=event.deadline if event.deadline is not None else step.deadline,
            )  # fmt: skip
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
                **_NOT_WAITING,
            )
            at = replace(_set_step(at, event.index, done), cursor=event.index + 1)
            if state.consumes_signal(event.index):
                # The step consumed the first pending signal of its name (its one output).
                consumed = state.consumed_signal(event.index)
                if consumed is None or event.output_hashes != (consumed.payload_hash,):
                    _corrupt(state, f"signal step {event.step_id!r} finished without signal")
                remaining = list(state.signals)
                remaining.remove(consumed)
                at = replace(at, signals=tuple(remaining))
            return at
        case StepFailed():
            step = _running(state, event.step_id, event.index)
            failed = replace(
                step,
                status=StepStatus.FAILED,
                attempt=event.attempt,
                reason=event.reason,
                error_type=event.error_type,
                fingerprint=event.fingerprint,
                **_NOT_WAITING,
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
                **_NOT_WAITING,
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
        case TimerStarted() | TaskScheduled():
            step = _running(state, event.step_id, event.index)
            if event.attempt != step.attempt or step.waiting:
                _corrupt(state, f"a second wait for step {event.step_id!r} attempt {event.attempt}")
            task = event if isinstance(event, TaskScheduled) else None
            waiting = replace(
                step,
                waiting=True,
                fire_at=event.fire_at,
                task_id=task.task_id if task else None,
                task_queue=task.queue if task else None,
            )
            return _set_step(at, event.index, waiting)
        case TimerFired():
            step = _running(state, event.step_id, event.index)
            if not step.waiting or step.fire_at is None or step.timer_fired:
                _corrupt(state, f"TimerFired for step {event.step_id!r} with no timer running")
            return _set_step(at, event.index, replace(step, timer_fired=True))
        case SignalReceived():
            pending = PendingSignal(event.name, event.payload_hash, event.request_id)
            return replace(at, signals=(*state.signals, pending))
        case FlowCancelRequested():
            return replace(at, cancel_requested=True, cancel_reason=event.reason)
        case CompensationStarted():
            step = _step_at(state, event.step_id, event.index)
            if step.status is not StepStatus.FINISHED_OK or step.compensation not in (
                CompensationStatus.NONE, CompensationStatus.RETRYING
            ) or state.init.steps[event.index].compensate is None:
                _corrupt(state, f"CompensationStarted for step {event.step_id!r}")
            comp = replace(
                step, compensation=CompensationStatus.RUNNING, compensation_attempt=event.attempt
            )
            return _set_step(at, event.index, comp)
        case CompensationFinished() | CompensationFailed():
            step = _step_at(state, event.step_id, event.index)
            if step.compensation is not CompensationStatus.RUNNING:
                _corrupt(state, f"{type(event).__name__} for step {event.step_id!r}")
            if isinstance(event, CompensationFinished):
                status = CompensationStatus.DONE
            elif event.delay_ms is None:
                status = CompensationStatus.FAILED
            else:
                status = CompensationStatus.RETRYING
            return _set_step(at, event.index, replace(step, compensation=status))
        case FlowCancelled():
            return replace(at, cancelled=True)
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
