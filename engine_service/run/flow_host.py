"""What a flow's handle and a branch need of the engine that made them: its settings and
:class:`FlowHost`, which :class:`~engine_service.run.engine.Engine` is.

A module of its own so that :mod:`engine_service.run.flow_run` and
:mod:`engine_service.run.branching` depend on this contract and not on the Engine that imports them
(an import circle before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from engine_service.core.writes import utc_now
from engine_service.run.hooks import Hooks
from engine_service.steps.registry import StepRegistry
from engine_service.steps.retry import StepDefaults
from flowledger.errors import InvalidArgument
from flowledger_core.domain import StoredEvent
from flowledger_core.ports import EventStore

__all__ = ["AppendObserver", "EngineSettings", "FlowHost"]

AppendObserver = Callable[[str, str, tuple[StoredEvent, ...]], None]
"""(namespace, flow id, the events of one applied append as stored)."""


@dataclass(frozen=True)
class EngineSettings:
    # Save a snapshot of the replayed state whenever the log passes a multiple of this many
    # events (0 disables). Loading a flow then reads the snapshot and the tail after it.
    snapshot_every: int = 100
    read_chunk_size: int = 1000
    # Retry policy and per-attempt timeout of steps whose definition sets none (decision 0010).
    step_defaults: StepDefaults = field(default_factory=StepDefaults)
    # Waits (timers, retry backoffs) this short are slept through inside the run, lease held;
    # longer ones make the flow WAITING and let go of it (decision 0013).
    inline_wait_ms: int = 1000
    # The time waits are measured against (recorded in the log, never re-read on replay).
    clock: Callable[[], datetime] = field(default=utc_now, compare=False)

    def __post_init__(self) -> None:
        if self.snapshot_every < 0:
            raise InvalidArgument.field("snapshot_every", "must be >= 0")
        if not 1 <= self.read_chunk_size <= 10_000:
            raise InvalidArgument.field("read_chunk_size", "must be 1..10000")
        if not 0 <= self.inline_wait_ms <= 60_000:
            raise InvalidArgument.field("inline_wait_ms", "must be 0..60000")


class FlowHost(Protocol):
    """The engine as a flow's handle sees it."""

    store: EventStore
    registry: StepRegistry
    settings: EngineSettings
    hooks: Hooks
    append_observer: AppendObserver | None
