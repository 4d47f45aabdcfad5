"""What a decision turns into: one append (:class:`Write`) or nothing yet (:class:`Suspend`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine_service.core.decide import Action, RunCompensation, RunStep
from engine_service.core.event_codec import encode
from engine_service.core.events import (
    CompensationFailed,
    EngineEvent,
    FlowFailed,
    FlowInitialized,
    StepAttemptFailed,
    StepStarted,
)
from engine_service.core.ids import command_id, init_command_id
from engine_service.core.replay import FlowState
from engine_service.steps.builtin import is_builtin
from flowledger.errors import ResourceExhausted
from flowledger_core.domain import Append, FlowStatus, NewArtifact


@dataclass(frozen=True)
class Write:
    """One append: all or nothing. ``wake_at``/``task_queue`` go with new_status WAITING."""

    events: tuple[EngineEvent, ...]
    command_id: str
    artifacts: tuple[NewArtifact, ...] = ()
    new_status: FlowStatus | None = None
    wake_at: datetime | None = None
    task_queue: str | None = None

    @property
    def retry_delay_ms(self) -> int:
        """The backoff to wait in the run after this write (a retry's delay short enough not
        to suspend the flow), else 0."""
        if self.new_status is FlowStatus.WAITING:
            return 0
        return sum(
            e.delay_ms or 0
            for e in self.events
            if isinstance(e, StepAttemptFailed | CompensationFailed)
        )

    @property
    def suspends(self) -> bool:
        return self.new_status is FlowStatus.WAITING


@dataclass(frozen=True)
class Suspend:
    """Nothing to write: the flow waits (until ``until``, or for a signal/worker when None)."""

    until: datetime | None


def utc_now() -> datetime:
    return datetime.now(UTC)


def keeps_outcome(state: FlowState, action: Action) -> bool:
    """Whether planning ``action`` ran a step function (its outcome is then kept across a
    refused append). Anything else is planned again from the re-read log: a wait, say,
    must see a signal that arrived meanwhile."""
    if isinstance(action, RunCompensation):
        return True
    return (
        isinstance(action, RunStep)
        and state.init is not None
        and not is_builtin(state.init.steps[action.index].type)
    )


EVENTS_PER_FLOW_EXCEEDED = "EVENTS_PER_FLOW_EXCEEDED"


def out_of_room(
    flow_id: str, state: FlowState, generation: int, full: ResourceExhausted
) -> Write:
    """FlowFailed for a flow whose log reached the store's events-per-flow limit."""
    assert state.init is not None
    index = min(state.cursor, len(state.steps) - 1)
    step_id = state.steps[index].step_id
    event = FlowFailed(step_id, index, full.message, "EventsPerFlowExceeded")
    command = command_id(flow_id, generation, index, 0, "events-per-flow")
    return Write((event,), command, new_status=FlowStatus.FAILED)


def initial_write(
    flow_id: str,
    generation: int,
    init: FlowInitialized,
    artifacts: tuple[NewArtifact, ...],
    started: StepStarted | None = None,
) -> Write:
    """A flow's first append: FlowInitialized (with the first StepStarted when given); the flow
    RUNNING from then on."""
    events: tuple[EngineEvent, ...] = (init,) if started is None else (init, started)
    return Write(events, init_command_id(flow_id, generation), artifacts, FlowStatus.RUNNING)


def append_command(
    namespace: str, flow_id: str, expected_version: int, write: Write, fencing_token: int
) -> Append:
    """``write`` as the store's append command, after ``expected_version``."""
    return Append(
        namespace=namespace,
        flow_id=flow_id,
        expected_version=expected_version,
        command_id=write.command_id,
        events=tuple(encode(e) for e in write.events),
        artifacts=write.artifacts,
        new_status=write.new_status,
        fencing_token=fencing_token,
        wake_at=write.wake_at,
        task_queue=write.task_queue,
    )
