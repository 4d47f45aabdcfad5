"""What a decision turns into: one append (:class:`Write`) or nothing yet (:class:`Suspend`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine_service.events import CompensationFailed, EngineEvent, StepAttemptFailed
from store_service.domain import FlowStatus, NewArtifact


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
