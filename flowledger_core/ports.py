"""The storage port: what the store service (and the in-process engine) needs from a backend.

Two implementations, one contract: ``adapters.memory.MemoryEventStore`` and
``adapters.postgres.PostgresEventStore``; ``tests/store/`` runs one parity suite over both.
Every method raises only :mod:`flowledger.errors` classes. Methods that write are atomic: when
they raise, nothing was written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from flowledger_core.domain import (
    Append,
    AppendResult,
    ArtifactLookup,
    ClaimRequest,
    CreatedFlow,
    DefinitionPage,
    DefinitionTransitionCommand,
    EventType,
    FeedEvent,
    Flow,
    FlowFilter,
    FlowLease,
    FlowPage,
    NewBranch,
    NewDefinitionVersion,
    NewFlow,
    Page,
    Prune,
    Snapshot,
    StepCounts,
    StoredDefinition,
    StoredEvent,
)


class EventStore(Protocol):
    async def create_flow(self, new: NewFlow) -> tuple[Flow, bool]:
        """Create a flow; returns (flow, existed). Same id + same attributes → existed=True;
        same id + other attributes → AlreadyExists."""
        ...

    async def create_flow_with(
        self,
        new: NewFlow,
        *,
        lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:
        """``create_flow``, and for a flow created now, in the same transaction: lease it to
        ``lease`` (owner, ms) under a new fencing token, as a claim would, and append
        ``initial`` (its namespace and flow id are the new flow's; expected_version must be 0
        and fencing_token 0: it carries the new lease's token). Everything is validated before
        anything is written. An existing flow is returned as it is: no lease, no append."""
        ...

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        """NotFound when absent from ``namespace`` (or deleted, unless include_deleted)."""
        ...

    async def list_flows(self, flt: FlowFilter, page: Page) -> FlowPage:
        """Newest first (created_at, then flow_id, descending); stable keyset pagination."""
        ...

    async def append(self, cmd: Append) -> AppendResult:
        """Append atomically. VersionConflict on a stale expected_version; a repeated command_id
        returns the first result with duplicate=True and writes nothing; artifacts deduplicated
        by hash, inserted in the same transaction; FailedPrecondition on a deleted flow, or
        when fencing_token != 0 and it is not the flow's current lease token or that lease has
        expired (reason LEASE_LOST). A command with ``new_status`` replaces the flow's status,
        wake_at and task_queue (None clears them); InvalidArgument when wake_at or task_queue
        come without new_status, or task_queue with another status than WAITING."""
        ...

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        """The flow's log as one ordered sequence (inherited branch prefix included), in chunks.
        NotFound is raised on first iteration when the flow does not exist."""
        ...

    async def count_steps(self, namespace: str, flow_id: str) -> StepCounts: ...

    def subscribe(
        self,
        namespace: str,
        after_cursor: str = "",
        types: Sequence[EventType] = (),
        chunk_size: int = 500,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        """Every event of the namespace, catch-up then live, never skipping an event whose
        transaction commits late, never twice. Runs until the consumer stops iterating."""
        ...

    async def get_artifacts(self, namespace: str, hashes: Sequence[str]) -> ArtifactLookup:
        """The artifacts ``namespace`` references: an accepted append of one of its flows
        offered the hash (so a branch sees its parent's). Any other hash is missing, stored for
        another namespace or not at all alike. At most 1000 hashes (InvalidArgument)."""
        ...

    async def create_branch(self, new: NewBranch) -> tuple[Flow, bool]:
        """O(1) copy-on-write branch at ``fork_version`` (≤ the parent's version)."""
        ...

    async def delete_branch(
        self, namespace: str, flow_id: str, deleted_by: str = "", reason: str = ""
    ) -> Flow:
        """Mark deleted (recorded, never erased). Idempotent."""
        ...

    async def prune(self, cmd: Prune) -> tuple[Flow, bool]:
        """Cut the log after keep_through_version as a new generation; (flow, duplicate)."""
        ...

    async def save_snapshot(
        self, namespace: str, flow_id: str, version: int, state_json: str
    ) -> None: ...

    async def load_snapshot(
        self, namespace: str, flow_id: str, max_version: int = 0
    ) -> Snapshot | None:
        """Latest snapshot valid for the flow's current log (not cut away by a prune)."""
        ...

    # --- versioned definitions ---

    async def put_definition_version(
        self, new: NewDefinitionVersion
    ) -> tuple[StoredDefinition, bool]:
        """Store the next version of ``new.name`` as DRAFT; (version, existed). A repeated
        ``request_id`` returns the version it created with existed=True."""
        ...

    async def get_definition_version(
        self, namespace: str, name: str, version: int = 0
    ) -> StoredDefinition:
        """Version 0 = the latest published (greatest published_at). NotFound otherwise."""
        ...

    async def list_definition_versions(
        self, namespace: str, name: str | None, page: Page
    ) -> DefinitionPage:
        """name None: the latest version of every definition (by name); else every version of
        ``name``, newest first."""
        ...

    async def transition_definition_version(
        self, cmd: DefinitionTransitionCommand
    ) -> StoredDefinition:
        """FailedPrecondition unless the current state is in ``from_states`` (a version already in
        ``to_state`` and not being published again is returned unchanged). Each transition is
        appended to the version's history; PUBLISHED sets published_at = now."""
        ...

    # --- work leases ---

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        """Lease claimable flows (not deleted, lease free or expired), skipping rows other
        claimers hold (SKIP LOCKED). Without ``task_queues`` (engines): QUEUED/RUNNING flows and
        WAITING ones whose wake_at has passed, in the order they became claimable (since they
        entered their status, or their wake_at for WAITING ones); with them (task workers):
        WAITING flows on one of those queues, whatever their wake_at, longest waiting first.
        Every claim takes a new fencing token from one global increasing sequence, so a
        takeover always has a larger token."""
        ...

    async def renew_lease(
        self, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
    ) -> FlowLease:
        """FailedPrecondition(reason LEASE_LOST) when the token is stale or the lease expired."""
        ...

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        """Clear the lease if ``fencing_token`` still holds it; False (no change) otherwise."""
        ...

    async def close(self) -> None: ...
