"""In-memory event store: the behavioural twin of ``adapters.postgres`` (tests, local engine).

The layout mirrors the schema so that both backends answer alike: a flow is a chain of
generations (a branch's generation 0 inherits its parent's log up to the fork version, a prune
opens a generation that inherits the previous one up to the kept version), commands are
remembered per flow, snapshots are keyed by (generation, version). One asyncio lock serialises
writes; the feed (:mod:`._memory_feed`) wakes live subscribers. Payload texts are kept as
received, whereas Postgres (jsonb) returns them normalised: compare parsed JSON across backends.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from flowledger.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unavailable,
    VersionConflict,
)
from flowledger_core.domain import (
    Append,
    AppendResult,
    Artifact,
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
from flowledger_core.limits import DEFAULT_MAX_EVENTS_PER_FLOW
from store_service.adapters import _memory_leases as leases
from store_service.adapters import _memory_support as support
from store_service.adapters._memory_definitions import DefinitionBook
from store_service.adapters._memory_feed import MemoryFeed
from store_service.adapters._memory_records import Generation, Record, read_log
from store_service.adapters.flow_limits import check_events_per_flow
from store_service.adapters.flow_rules import (
    REOPENED,
    check_is_branch,
    check_not_ended,
    checked_prefix,
    reopens,
)
from store_service.adapters.initial_append import as_initial, bind_initial, check_initial
from store_service.adapters.lease_rules import check_lease_request, check_renewal, check_token


class MemoryEventStore:
    """:class:`flowledger_core.ports.EventStore` held in process memory."""

    def __init__(self, *, max_events_per_flow: int = DEFAULT_MAX_EVENTS_PER_FLOW) -> None:
        self._max_events_per_flow = max_events_per_flow
        self._lock = asyncio.Lock()
        self._feed = MemoryFeed(self._lock)
        self._records: dict[str, Record] = {}
        self._artifacts: dict[str, Artifact] = {}
        self._artifact_refs: set[tuple[str, str]] = set()  # (namespace, hash), as migration 0009
        self._seq = 0
        self._definitions = DefinitionBook()
        self._lease_tokens = itertools.count(1)  # the flow_lease_tokens sequence
        self._closed = False

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, new: NewFlow) -> tuple[Flow, bool]:
        self._check_open()
        flow = support.new_flow(new, support.flow_id_or_new(new.flow_id), None, 0)
        async with self._lock:
            return self._create(flow, None)

    async def create_flow_with(
        self,
        new: NewFlow,
        *,
        lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:
        self._check_open()
        if lease is not None:
            check_lease_request(*lease)
        flow = support.new_flow(new, support.flow_id_or_new(new.flow_id), None, 0)
        if initial is not None:
            check_initial(initial, flow.status)
            with as_initial():
                first = bind_initial(initial, flow, None)
                support.check_append(first)
                # A new flow is at version 0: the limit is known before it is made.
                check_events_per_flow(first, 0, self._max_events_per_flow)
        async with self._lock:
            created, existed = self._create(flow, None)
            if existed:
                return CreatedFlow(created, True)
            rec = self._records[created.flow_id]
            granted = None
            if lease is not None:
                granted = leases.grant(rec, *lease, self._lease_tokens.__next__)
            result = None
            if initial is not None:
                result = self._apply(rec, bind_initial(initial, rec.flow, granted))
            return CreatedFlow(rec.flow, False, granted, result)

    async def create_branch(self, new: NewBranch) -> tuple[Flow, bool]:
        self._check_open()
        parent_id = support.flow_uuid(new.parent_flow_id, "parent_flow_id")
        if new.fork_version < 0:
            raise InvalidArgument.field("fork_version", "must be >= 0")
        flow = support.new_flow(
            new, support.flow_id_or_new(new.flow_id), parent_id, new.fork_version
        )
        async with self._lock:
            parent = self._find(new.namespace, parent_id, field="parent_flow_id").flow
            if new.fork_version > parent.version:
                raise InvalidArgument.field(
                    "fork_version", f"is past the parent's version {parent.version}"
                )
            return self._create(flow, (parent.flow_id, parent.generation))

    def _create(self, flow: Flow, inherit: tuple[str, int] | None) -> tuple[Flow, bool]:
        existing = self._records.get(flow.flow_id)
        if existing is None:
            self._records[flow.flow_id] = Record(
                flow, [Generation(flow.fork_version, inherit)], flow.created_at
            )
            return flow, False
        if not support.same_creation(existing.flow, flow):
            raise AlreadyExists(
                f"flow {flow.flow_id} already exists with other attributes",
                reason="FLOW_EXISTS",
                metadata={"flow_id": flow.flow_id},
            )
        return existing.flow, True

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        self._check_open()
        async with self._lock:
            return self._find(namespace, flow_id, include_deleted).flow

    async def list_flows(self, flt: FlowFilter, page: Page) -> FlowPage:
        self._check_open()
        if not 1 <= page.size <= 1000:
            raise InvalidArgument.field("page_size", "must be 1..1000")
        after = support.decode_page_token(page.token)
        if flt.flow_id_prefix:
            checked_prefix(flt)
        size = page.size
        async with self._lock:
            rows = [
                r.flow
                for r in self._records.values()
                if support.matches(r.flow, flt)
                and (after is None or support.flow_key(r.flow) < after)
            ]
        rows.sort(key=support.flow_key, reverse=True)
        if len(rows) <= size:
            return FlowPage(tuple(rows))
        return FlowPage(tuple(rows[:size]), support.encode_page_token(rows[size - 1]))

    async def delete_branch(
        self, namespace: str, flow_id: str, deleted_by: str = "", reason: str = ""
    ) -> Flow:
        self._check_open()
        async with self._lock:
            rec = self._find(namespace, flow_id, include_deleted=True)
            check_is_branch(rec.flow)
            if not rec.flow.deleted:
                rec.flow = replace(rec.flow, deleted=True, updated_at=datetime.now(UTC))
            return rec.flow

    # -- the log -----------------------------------------------------------------------------

    async def append(self, cmd: Append) -> AppendResult:
        self._check_open()
        support.check_append(cmd)
        async with self._lock:
            rec = self._find(cmd.namespace, cmd.flow_id, include_deleted=True)
            first = rec.repeat(cmd.command_id, "append")
            if first is not None:
                return replace(first, duplicate=True)
            return self._apply(rec, cmd)

    def _apply(self, rec: Record, cmd: Append) -> AppendResult:
        """Append ``cmd`` (checked, not a repeat) to ``rec``; under the lock. The checks in
        the order of flowledger_append_batch: deleted, lease, version, ended, events limit."""
        rec.check_writable(cmd.fencing_token)
        if cmd.expected_version != rec.flow.version:
            raise VersionConflict(rec.flow.flow_id, cmd.expected_version, rec.flow.version)
        check_not_ended(rec.flow)
        check_events_per_flow(cmd, rec.flow.version, self._max_events_per_flow)
        events = rec.apply(cmd, self._seq + 1, datetime.now(UTC))
        # Nothing can fail from here on: the store's half of the commit.
        self._seq += len(events)
        for art in cmd.artifacts:
            if art.hash not in self._artifacts:
                self._artifacts[art.hash] = Artifact(
                    art.hash, art.kind, art.payload_json, art.metadata_json,
                    events[art.event_index].seq,
                )  # fmt: skip
            self._artifact_refs.add((rec.flow.namespace, art.hash))
        self._feed.publish(rec.flow.namespace, events)
        return rec.commands[cmd.command_id][1]

    async def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        self._check_open()
        support.flow_uuid(flow_id)
        support.check_chunk_size(chunk_size)
        if after_version < 0:
            raise InvalidArgument.field("after_version", "must be >= 0")
        if to_version < 0:
            raise InvalidArgument.field("to_version", "must be >= 0")
        async with self._lock:
            rec = self._find(namespace, flow_id)
            upto = rec.flow.version if to_version <= 0 else min(to_version, rec.flow.version)
            events = self._readable(rec, after_version, upto)
        for start in range(0, len(events), chunk_size):
            yield events[start : start + chunk_size]

    async def count_steps(self, namespace: str, flow_id: str) -> StepCounts:
        self._check_open()
        async with self._lock:
            rec = self._find(namespace, flow_id)
            events = self._readable(rec, 0, rec.flow.version)
        return StepCounts(
            len(events),
            sum(e.type is EventType.STEP_FINISHED for e in events),
            sum(e.type is EventType.STEP_FAILED for e in events),
        )

    async def subscribe(
        self,
        namespace: str,
        after_cursor: str = "",
        types: Sequence[EventType] = (),
        chunk_size: int = 500,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        self._check_open()
        after_seq = support.decode_cursor(after_cursor)
        support.check_chunk_size(chunk_size)
        async for batch in self._feed.follow(
            namespace, after_seq, types, chunk_size, self._check_open
        ):
            yield batch

    # -- artifacts, branches, prunes, snapshots ----------------------------------------------

    async def get_artifacts(self, namespace: str, hashes: Sequence[str]) -> ArtifactLookup:
        self._check_open()
        if len(hashes) > 1000:
            raise InvalidArgument.field("hashes", "at most 1000 hashes per call")
        async with self._lock:
            # Only what ``namespace`` references; anything else is missing, as a hash never stored.
            wanted = list(dict.fromkeys(hashes))
            found = [self._artifacts[h] for h in wanted if (namespace, h) in self._artifact_refs]
            missing = [h for h in wanted if (namespace, h) not in self._artifact_refs]
        return ArtifactLookup(tuple(found), tuple(missing))

    async def prune(self, cmd: Prune) -> tuple[Flow, bool]:
        self._check_open()
        support.check_command_id(cmd.command_id)
        if cmd.keep_through_version < 0:
            raise InvalidArgument.field("keep_through_version", "must be >= 0")
        async with self._lock:
            rec = self._find(cmd.namespace, cmd.flow_id, include_deleted=True)
            if rec.repeat(cmd.command_id, "prune") is not None:
                return rec.flow, True
            rec.check_writable()
            flow = rec.flow
            if cmd.expected_version != flow.version:
                raise VersionConflict(flow.flow_id, cmd.expected_version, flow.version)
            if cmd.keep_through_version > flow.version:
                raise InvalidArgument.field(
                    "keep_through_version", f"is past the flow's version {flow.version}"
                )
            keep = cmd.keep_through_version
            now = datetime.now(UTC)
            rec.generations.append(Generation(keep, (flow.flow_id, flow.generation)))
            if reopens(flow, keep):
                flow = replace(flow, status=REOPENED, wake_at=None, task_queue=None)
                rec.status_since = now
            rec.flow = replace(flow, version=keep, generation=flow.generation + 1, updated_at=now)
            rec.commands[cmd.command_id] = ("prune", AppendResult(keep, keep, ()))
            return rec.flow, False

    async def save_snapshot(
        self, namespace: str, flow_id: str, version: int, state_json: str
    ) -> None:
        self._check_open()
        support.check_json(state_json, "state_json")
        if version < 0:
            raise InvalidArgument.field("version", "must be >= 0")
        async with self._lock:
            rec = self._find(namespace, flow_id, include_deleted=True)
            rec.check_writable()
            if version > rec.flow.version:
                raise InvalidArgument.field(
                    "version", f"is past the flow's version {rec.flow.version}"
                )
            key = (rec.flow.generation, version)
            if key not in rec.snapshots:
                rec.snapshots[key] = Snapshot(
                    rec.flow.flow_id, version, state_json, datetime.now(UTC)
                )

    async def load_snapshot(
        self, namespace: str, flow_id: str, max_version: int = 0
    ) -> Snapshot | None:
        self._check_open()
        if max_version < 0:
            raise InvalidArgument.field("max_version", "must be >= 0")
        async with self._lock:
            rec = self._find(namespace, flow_id)
            return rec.latest_snapshot(max_version)

    async def put_definition_version(
        self, new: NewDefinitionVersion
    ) -> tuple[StoredDefinition, bool]:
        self._check_open()
        return self._definitions.put(new)

    async def get_definition_version(
        self, namespace: str, name: str, version: int = 0
    ) -> StoredDefinition:
        self._check_open()
        return self._definitions.get(namespace, name, version)

    async def list_definition_versions(
        self, namespace: str, name: str | None, page: Page
    ) -> DefinitionPage:
        self._check_open()
        return self._definitions.list(namespace, name, page)

    async def transition_definition_version(
        self, cmd: DefinitionTransitionCommand
    ) -> StoredDefinition:
        self._check_open()
        return self._definitions.transition(cmd)

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        self._check_open()
        async with self._lock:
            return leases.claim(self._records.values(), req, self._lease_tokens.__next__)

    async def renew_lease(
        self, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
    ) -> FlowLease:
        self._check_open()
        check_renewal(owner, fencing_token, lease_ms)
        async with self._lock:
            rec = self._find(namespace, flow_id, include_deleted=True)
            return leases.renew(rec, owner, fencing_token, lease_ms)

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        self._check_open()
        check_token(fencing_token)
        async with self._lock:
            rec = self._find(namespace, flow_id, include_deleted=True)
            return leases.release(rec, fencing_token)

    async def close(self) -> None:
        self._closed = True
        await self._feed.close()

    # -- lookups -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed", reason="SHUTTING_DOWN")

    def _readable(self, rec: Record, after: int, upto: int) -> list[StoredEvent]:
        return read_log(self._records, rec.flow.flow_id, rec.flow.generation, after, upto)

    def _find(
        self, namespace: str, flow_id: str, include_deleted: bool = False, field: str = "flow_id"
    ) -> Record:
        rec = self._records.get(support.flow_uuid(flow_id, field))
        if (
            rec is None
            or rec.flow.namespace != namespace
            or (rec.flow.deleted and not include_deleted)
        ):
            raise NotFound(
                f"flow {flow_id} does not exist in namespace {namespace!r}",
                reason="FLOW_NOT_FOUND",
                metadata={"namespace": namespace, "flow_id": flow_id},
            )
        return rec
