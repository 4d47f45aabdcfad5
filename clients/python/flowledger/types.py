"""What the SDK returns: frozen dataclasses and enums, free of generated protobuf types.

JSON values arrive as text (``*_json``), exactly as stored, and are parsed on access
(``payload``, ``config``), so hashing the text you received reproduces the recorded hash.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

JsonValue = Any


def _parse(text: str) -> JsonValue:
    return json.loads(text) if text else None


class DefinitionState(enum.Enum):
    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


class FlowStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED)


class StepStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED_OK = "finished_ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"  # for a timer, a signal or a worker: StepView.wait says which
    CANCELLED = "cancelled"  # in progress when the flow was cancelled


class EventType(enum.Enum):
    """Event kinds; the value is the stored lower-case name, ``variant`` the compact letter.

    The contract's ``EventType`` (common.proto) is the source: the members are its values without
    the ``EVENT_TYPE_`` prefix, in wire order, and the letters are the ones its comments name.
    Written out rather than built from the descriptor so that type checkers see the members;
    tests/test_event_types.py checks both against the proto. The store's domain uses this enum.
    """

    FLOW_INITIALIZED = "flow_initialized"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    STEP_FAILED = "step_failed"
    STEP_SIGNAL = "step_signal"
    PROPERTY_PREFERENCE_ASSIGNED = "property_preference_assigned"
    FLOW_COMPLETED = "flow_completed"
    FLOW_FAILED = "flow_failed"
    FLOW_CANCELLED = "flow_cancelled"
    STEP_SKIPPED = "step_skipped"
    STEP_ATTEMPT_FAILED = "step_attempt_failed"
    TIMER_STARTED = "timer_started"
    TIMER_FIRED = "timer_fired"
    SIGNAL_RECEIVED = "signal_received"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_FINISHED = "compensation_finished"
    COMPENSATION_FAILED = "compensation_failed"
    TASK_SCHEDULED = "task_scheduled"
    FLOW_CANCEL_REQUESTED = "flow_cancel_requested"

    @property
    def variant(self) -> str:
        return _VARIANTS[self]


# One letter per member, in declaration order (the proto's "Compact variant" comments).
_VARIANTS = dict(zip(EventType, "ISFXGPCEKZRTWNYVUQA", strict=True))


@dataclass(frozen=True)
class DefinitionStep:
    id: str
    type: str
    config_json: str
    # The whole step as a definition document writes it (retry, timeouts, when, compensate...).
    spec_json: str = "{}"

    @property
    def config(self) -> dict[str, JsonValue]:
        value = _parse(self.config_json)
        return value if isinstance(value, dict) else {}

    @property
    def spec(self) -> dict[str, JsonValue]:
        value = _parse(self.spec_json)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DefinitionHistoryEntry:
    state: DefinitionState
    change_note: str
    actor: str
    at: datetime | None


@dataclass(frozen=True)
class DefinitionVersion:
    namespace: str
    name: str
    version: int
    state: DefinitionState
    definition_hash: str
    steps: tuple[DefinitionStep, ...]
    change_note: str
    created_by: str
    created_at: datetime | None
    published_at: datetime | None
    history: tuple[DefinitionHistoryEntry, ...]


@dataclass(frozen=True)
class CreatedVersion:
    version: DefinitionVersion
    # True when the request id had already created this version.
    existed: bool


@dataclass(frozen=True)
class DefinitionPage:
    versions: tuple[DefinitionVersion, ...]
    next_page_token: str


@dataclass(frozen=True)
class Flow:
    flow_id: str
    namespace: str
    name: str
    status: FlowStatus
    metadata_json: str
    parent_flow_id: str | None
    fork_version: int
    version: int
    created_by: str
    created_at: datetime | None
    updated_at: datetime | None
    deleted: bool
    generation: int


@dataclass(frozen=True)
class FlowPage:
    flows: tuple[Flow, ...]
    next_page_token: str


@dataclass(frozen=True)
class StartedFlow:
    flow_id: str
    # True when the idempotency key had already started this flow (nothing was started now).
    existed: bool


@dataclass(frozen=True)
class StepWait:
    """What a waiting step waits for: a signal (its name), a worker (the task's queue) or just
    time; ``until``: when the wait ends by itself (a wait step's time, a timeout), else None."""

    signal_name: str
    task_queue: str
    until: datetime | None


@dataclass(frozen=True)
class StepView:
    step_id: str
    status: StepStatus
    fingerprint: str | None
    output_hashes: tuple[str, ...]
    attempts: int
    wait: StepWait | None = None  # set while status is WAITING


@dataclass(frozen=True)
class FlowView:
    flow: Flow
    definition_name: str
    definition_version: int
    definition_hash: str
    cursor: int
    steps: tuple[StepView, ...]
    flow_fingerprint: str | None
    variants: str
    started_by: str

    @property
    def status(self) -> FlowStatus:
        return self.flow.status

    def step(self, step_id: str) -> StepView | None:
        return next((s for s in self.steps if s.step_id == step_id), None)


@dataclass(frozen=True)
class Event:
    seq: int
    flow_id: str
    version: int
    type: EventType
    payload_json: str
    ts: datetime | None
    command_id: str

    @property
    def payload(self) -> JsonValue:
        return _parse(self.payload_json)

    @property
    def variant(self) -> str:
        return self.type.variant


@dataclass(frozen=True)
class WatchUpdate:
    events: tuple[Event, ...]
    # The flow's status after these events.
    status: FlowStatus


@dataclass(frozen=True)
class Artifact:
    hash: str
    kind: str
    payload_json: str
    metadata_json: str
    produced_in_seq: int

    @property
    def payload(self) -> JsonValue:
        return _parse(self.payload_json)


@dataclass(frozen=True)
class Artifacts:
    found: tuple[Artifact, ...]
    missing: tuple[str, ...]

    def by_hash(self) -> dict[str, Artifact]:
        return {a.hash: a for a in self.found}


@dataclass(frozen=True)
class Divergence:
    version: int
    step_id: str
    # "artifact_hash", "step_fingerprint", "flow_fingerprint", "definition_hash",
    # "missing_artifact" or "event_order".
    kind: str
    recorded: str
    recomputed: str
    detail: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    events_checked: int
    artifacts_checked: int
    divergence: Divergence | None


@dataclass(frozen=True)
class SignalResult:
    # The flow's version after the signal was recorded.
    version: int
    # True when the request id had already delivered this signal (nothing was written).
    duplicate: bool
    # True when a step was waiting for this signal and the flow resumes now.
    resumed: bool


@dataclass(frozen=True)
class CancelResult:
    # The flow's version after the cancel was recorded.
    version: int
    # True when the flow was already cancelled or being cancelled (nothing was written).
    already: bool
