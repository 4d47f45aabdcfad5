"""The engine's events as typed values (frozen dataclasses), with their event types.

Their JSON form in ``event_log.payload`` is :mod:`engine_service.core.event_codec`: each payload
carries its full kind (``{"kind": "StepFinished", ...}``) and is written as RFC 8785 canonical
JSON, so that the same run gives the same payload text on any backend. Event types the engine
does not model decode to :class:`OpaqueEvent`, which replay ignores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from engine_service.definitions.definition import StepSpec
from flowledger.canonical import JsonValue
from flowledger_core.domain import EventType


@dataclass(frozen=True)
class FlowInitialized:
    definition_name: str
    definition_version: int
    definition_hash: str
    steps: tuple[StepSpec, ...]  # ids, types, kinds and params, in order
    input_hash: str
    variables_hash: str | None
    engine_version: str

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps)


@dataclass(frozen=True)
class StepStarted:
    step_id: str
    index: int
    attempt: int
    # The first attempt of a step with a step timeout records when the whole step (every
    # attempt and the waits between them) must have ended; absent from the payload otherwise.
    deadline: str | None = None


@dataclass(frozen=True)
class StepFinished:
    step_id: str
    index: int
    attempt: int
    input_hashes: tuple[str, ...]  # as the step received them (the fingerprint sorts them)
    output_hashes: tuple[str, ...]  # in the order the step produced them
    fingerprint: str


@dataclass(frozen=True)
class StepFailed:
    step_id: str
    index: int
    attempt: int
    reason: str
    error_type: str
    # Only for a continue_on_error step (the flow goes on): the fingerprint of its failure,
    # decision 0010. Absent from the payload otherwise.
    fingerprint: str | None = None


@dataclass(frozen=True)
class StepAttemptFailed:
    """An attempt failed and the step will be attempted again after ``delay_ms``."""

    step_id: str
    index: int
    attempt: int
    reason: str
    error_type: str
    delay_ms: int


@dataclass(frozen=True)
class StepSkipped:
    """The step's ``when`` condition was false: it did not run (decision 0010)."""

    step_id: str
    index: int
    fingerprint: str


@dataclass(frozen=True)
class StepSignal:
    step_id: str
    index: int
    name: str
    payload: JsonValue


@dataclass(frozen=True)
class TimerStarted:
    """A running step began to wait (a ``wait`` step for its time, a ``signal`` step for its
    signal): until ``fire_at`` (RFC 3339 UTC, milliseconds), or with no deadline when None.
    The flow is WAITING meanwhile and holds no lease."""

    step_id: str
    index: int
    attempt: int
    fire_at: str | None


@dataclass(frozen=True)
class TimerFired:
    """The wait of the step's attempt reached its ``fire_at`` (a wait ends, a signal or task
    wait times out)."""

    step_id: str
    index: int
    attempt: int


@dataclass(frozen=True)
class SignalReceived:
    """A signal delivered by SignalFlow; pending until a ``signal`` step of that name consumes
    it (first come, first consumed). The payload is the artifact ``payload_hash``."""

    name: str
    payload_hash: str
    request_id: str
    sent_by: str


@dataclass(frozen=True)
class TaskScheduled:
    """A ``task`` step's attempt was put on ``queue`` for external workers, with an optional
    deadline ``fire_at`` after which the attempt fails with a Timeout."""

    step_id: str
    index: int
    attempt: int
    queue: str
    task_id: str
    fire_at: str | None


@dataclass(frozen=True)
class CompensationStarted:
    step_id: str
    index: int
    attempt: int


@dataclass(frozen=True)
class CompensationFinished:
    step_id: str
    index: int
    attempt: int
    output_hashes: tuple[str, ...]


@dataclass(frozen=True)
class CompensationFailed:
    """An attempt of a compensation failed; ``delay_ms`` is the wait before the next attempt,
    None when it failed for good (the remaining compensations still run)."""

    step_id: str
    index: int
    attempt: int
    reason: str
    error_type: str
    delay_ms: int | None


@dataclass(frozen=True)
class FlowCancelRequested:
    """CancelFlow was called: no step starts any more; compensations run, then FlowCancelled."""

    reason: str
    requested_by: str


@dataclass(frozen=True)
class FlowCancelled:
    reason: str
    # Set when TerminateFlow ended the flow (who asked): at once, no compensation ran.
    terminated_by: str | None = None


@dataclass(frozen=True)
class PropertyPreferenceAssigned:
    """Params that replace, from now on, those FlowInitialized recorded for some steps (by step
    id; each a whole params object). A branch appends one first: see
    docs/decisions/0007-branch-params.md. Only steps that have not started may be named."""

    params: Mapping[str, Mapping[str, JsonValue]]


@dataclass(frozen=True)
class FlowCompleted:
    flow_fingerprint: str


@dataclass(frozen=True)
class FlowFailed:
    step_id: str
    index: int
    reason: str
    error_type: str


@dataclass(frozen=True)
class OpaqueEvent:
    """An event of a type this engine does not model (kept, never interpreted)."""

    type: EventType
    payload: JsonValue


EngineEvent: TypeAlias = (
    FlowInitialized
    | StepStarted
    | StepFinished
    | StepFailed
    | StepAttemptFailed
    | StepSkipped
    | StepSignal
    | PropertyPreferenceAssigned
    | FlowCompleted
    | FlowFailed
    | TimerStarted
    | TimerFired
    | SignalReceived
    | TaskScheduled
    | CompensationStarted
    | CompensationFinished
    | CompensationFailed
    | FlowCancelRequested
    | FlowCancelled
    | OpaqueEvent
)

EVENT_TYPES: dict[type[Any], EventType] = {
    FlowInitialized: EventType.FLOW_INITIALIZED,
    StepStarted: EventType.STEP_STARTED,
    StepFinished: EventType.STEP_FINISHED,
    StepFailed: EventType.STEP_FAILED,
    StepAttemptFailed: EventType.STEP_ATTEMPT_FAILED,
    StepSkipped: EventType.STEP_SKIPPED,
    StepSignal: EventType.STEP_SIGNAL,
    PropertyPreferenceAssigned: EventType.PROPERTY_PREFERENCE_ASSIGNED,
    FlowCompleted: EventType.FLOW_COMPLETED,
    FlowFailed: EventType.FLOW_FAILED,
    TimerStarted: EventType.TIMER_STARTED,
    TimerFired: EventType.TIMER_FIRED,
    SignalReceived: EventType.SIGNAL_RECEIVED,
    TaskScheduled: EventType.TASK_SCHEDULED,
    CompensationStarted: EventType.COMPENSATION_STARTED,
    CompensationFinished: EventType.COMPENSATION_FINISHED,
    CompensationFailed: EventType.COMPENSATION_FAILED,
    FlowCancelRequested: EventType.FLOW_CANCEL_REQUESTED,
    FlowCancelled: EventType.FLOW_CANCELLED,
}


def event_type(event: EngineEvent) -> EventType:
    if isinstance(event, OpaqueEvent):
        return event.type
    return EVENT_TYPES[type(event)]


def variant(event: EngineEvent) -> str:
    """The compact one-letter variant (I, S, F, X, G, C, ...)."""
    return event_type(event).variant
