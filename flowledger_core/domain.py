"""Domain values of the store: what the storage port takes and returns.

Frozen dataclasses, free of protobuf and of psycopg; conversion to the wire lives in
``flowledger_core.wire.store`` and to the database in ``store_service.adapters.postgres``.
JSON payloads are kept as JSON text exactly as received (after validation), so that what is read
back is byte-for-byte what was written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

# The event kinds are the SDK's enum itself, not a copy: the one Python list of the contract's
# ``EventType`` (common.proto). Its values are what ``event_log.event_type`` stores, its
# ``variant`` the compact letter; tests/test_event_types.py checks it against the proto.
from flowledger.types import EventType as EventType


class FlowStatus(enum.Enum):
    """Flow lifecycle; the value is what ``flows.status`` stores."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED)


@dataclass(frozen=True)
class NewEvent:
    type: EventType
    payload_json: str


@dataclass(frozen=True)
class NewArtifact:
    """An artifact to store with an append; ``event_index`` points into the same append's events."""

    hash: str
    kind: str
    payload_json: str
    metadata_json: str | None = None
    event_index: int = 0


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    flow_id: str
    version: int
    type: EventType
    payload_json: str
    ts: datetime
    command_id: str


@dataclass(frozen=True)
class Artifact:
    hash: str
    kind: str
    payload_json: str
    metadata_json: str | None
    produced_in_seq: int


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
    generation: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    lease_token: int = 0
    # While WAITING: when engines may claim the flow again (None: only an append moves it on),
    # and the task queue it waits on, if any (task workers claim it from there).
    wake_at: datetime | None = None
    task_queue: str | None = None


@dataclass(frozen=True)
class NewFlow:
    namespace: str
    name: str
    flow_id: str | None = None
    metadata_json: str = "{}"
    created_by: str = ""
    status: FlowStatus = FlowStatus.QUEUED


@dataclass(frozen=True)
class NewBranch:
    namespace: str
    parent_flow_id: str
    fork_version: int
    name: str
    flow_id: str | None = None
    metadata_json: str = "{}"
    created_by: str = ""
    status: FlowStatus = FlowStatus.QUEUED


@dataclass(frozen=True)
class Append:
    """One append command: events (and their artifacts) for one flow, all or nothing."""

    namespace: str
    flow_id: str
    expected_version: int
    command_id: str
    events: tuple[NewEvent, ...]
    artifacts: tuple[NewArtifact, ...] = ()
    new_status: FlowStatus | None = None
    fencing_token: int = 0
    # Only with new_status (which then replaces both on the flow, None clearing them): when a
    # WAITING flow becomes claimable by engines again, and the task queue it waits on.
    wake_at: datetime | None = None
    task_queue: str | None = None


@dataclass(frozen=True)
class AppendResult:
    first_version: int
    last_version: int
    seqs: tuple[int, ...]
    duplicate: bool = False


@dataclass(frozen=True)
class Prune:
    namespace: str
    flow_id: str
    keep_through_version: int
    expected_version: int
    command_id: str
    pruned_by: str = ""
    reason: str = ""


@dataclass(frozen=True)
class FlowFilter:
    namespace: str
    statuses: tuple[FlowStatus, ...] = ()
    name: str | None = None
    parent_flow_id: str | None = None
    include_deleted: bool = False
    flow_id_prefix: str = ""  # the start of a canonical id (flowledger_core.id_prefix)


@dataclass(frozen=True)
class Page:
    """A page request: ``token`` is opaque (from a previous :class:`FlowPage`)."""

    size: int = 100
    token: str = ""


@dataclass(frozen=True)
class FlowPage:
    flows: tuple[Flow, ...]
    next_token: str = ""


@dataclass(frozen=True)
class StepCounts:
    events: int
    steps_finished: int
    steps_failed: int


@dataclass(frozen=True)
class FeedEvent:
    """An event of the global feed and the opaque cursor that resumes right after it."""

    event: StoredEvent
    cursor: str


@dataclass(frozen=True)
class Snapshot:
    flow_id: str
    version: int
    state_json: str
    created_at: datetime


@dataclass(frozen=True)
class ArtifactLookup:
    found: tuple[Artifact, ...]
    missing: tuple[str, ...] = field(default_factory=tuple)


class DefinitionState(enum.Enum):
    """Lifecycle of a definition version: draft -> published -> archived (rollback re-publishes)."""

    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


@dataclass(frozen=True)
class DefinitionTransition:
    state: DefinitionState
    change_note: str
    actor: str
    at: datetime


@dataclass(frozen=True)
class StoredDefinition:
    """One version of a definition as stored; the document is canonical JSON text."""

    namespace: str
    name: str
    version: int
    state: DefinitionState
    definition_json: str
    definition_hash: str
    change_note: str
    created_by: str
    created_at: datetime
    published_at: datetime | None
    history: tuple[DefinitionTransition, ...] = ()
    # The request id that stored this version (None when it was stored without one): a client
    # that chose the id itself tells its own retried call from a reuse of the latest version.
    request_id: str | None = None


@dataclass(frozen=True)
class NewDefinitionVersion:
    namespace: str
    name: str
    definition_json: str
    definition_hash: str
    change_note: str = ""
    created_by: str = ""
    request_id: str | None = None


@dataclass(frozen=True)
class DefinitionTransitionCommand:
    """Move ``version`` to ``to_state`` if its state is one of ``from_states``."""

    namespace: str
    name: str
    version: int
    to_state: DefinitionState
    from_states: tuple[DefinitionState, ...]
    change_note: str = ""
    actor: str = ""


@dataclass(frozen=True)
class DefinitionPage:
    versions: tuple[StoredDefinition, ...]
    next_token: str = ""


@dataclass(frozen=True)
class ClaimRequest:
    """Claim up to ``limit`` runnable flows for ``owner`` (optionally only ``flow_ids``)."""

    owner: str
    limit: int
    lease_ms: int
    namespaces: tuple[str, ...] = ()
    flow_ids: tuple[str, ...] = ()
    # Empty (engines): QUEUED/RUNNING flows and WAITING ones whose wake_at passed. Set (task
    # workers): only WAITING flows on one of these queues, whatever their wake_at.
    task_queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class FlowLease:
    """A claimed flow. Appends must carry ``fencing_token`` and arrive before ``expires_at``."""

    flow: Flow
    fencing_token: int
    expires_at: datetime
    owner: str
    previous_owner: str = ""
    """A claim's only: who held the lease this claim took over because it had expired without
    a release ("" when the flow was free: new, released, ended or woken from a wait)."""
    remaining_ms: int | None = None
    """How long the lease had left as the store answered, by the store's own clock (None from a
    store too old to say). A holder dates its local expiry from when it got the answer, so a
    claim that waited out an outage, or a slow store, is not spent on arrival (issue 22)."""


@dataclass(frozen=True)
class CreatedFlow:
    """What ``create_flow_with`` did: the flow, whether it existed (then nothing else was done),
    the lease it took and the result of the initial append, when asked for."""

    flow: Flow
    existed: bool
    lease: FlowLease | None = None
    initial: AppendResult | None = None
