"""A handle on one flow: advances it step by step and reads it (seed chem-core F3 §4 API).

The handle caches the replayed state and trusts it only as far as the store confirms: every
append says which version it expects, and anything unexpected (a conflict, a duplicate, an
error) marks the cache stale so that the next call re-reads the log before deciding.
Use one handle from one task at a time; its methods serialize on a lock anyway.

A handle given a fencing token sends it with every append; when the store answers that the
lease is lost, the handle raises :class:`~engine_service.lease.LeaseLost` and refuses to write
ever again (reading still works).

A handle may be given an append observer (:attr:`FlowRun.on_append`): it is called, without
awaiting, with the stored form of the events of every append this handle made that the store
applied (the engine service feeds WatchFlow with it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine_service import decide as plan
from engine_service import snapshots
from engine_service.artifacts import ArtifactCache
from engine_service.definition import FlowDefinition
from engine_service.events import (
    EngineEvent,
    FlowInitialized,
    PropertyPreferenceAssigned,
    decode,
    encode,
    variant,
)
from engine_service.ids import branch_command_id, init_command_id
from engine_service.lease import LeaseLost, is_lease_lost
from engine_service.planner import Write, WritePlanner
from engine_service.progress import Progress
from engine_service.replay import FlowState, StepState, StepStatus, replay, replay_stored
from flowledger.canonical import JsonValue
from flowledger.errors import (
    FailedPrecondition,
    InvalidArgument,
    VersionConflict,
)
from store_service.domain import Append, Flow, FlowStatus, NewArtifact, StoredEvent

if TYPE_CHECKING:
    from engine_service.runner import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedEvent:
    """An event of the flow's log, typed, with what the store recorded about it."""

    version: int
    event: EngineEvent
    stored: StoredEvent

    @property
    def variant(self) -> str:
        return variant(self.event)


class FlowRun:
    """One flow, seen through its log. Made by :meth:`Engine.start` / :meth:`Engine.attach`."""

    def __init__(
        self,
        engine: Engine,
        flow: Flow,
        definition: FlowDefinition | None,
        *,
        fencing_token: int = 0,
        fresh: bool = False,
    ) -> None:
        self._engine = engine
        self._store = engine.store
        self.flow_id = flow.flow_id
        self.namespace = flow.namespace
        self._generation = flow.generation
        self._fencing_token = fencing_token
        self._lease_lost: LeaseLost | None = None
        self.on_append: Callable[[tuple[StoredEvent, ...]], None] | None = None
        """Called with the events of each append this handle made and the store applied."""
        # A branch's own log starts after the parent's prefix, with its params assignment.
        self._fork_version = flow.fork_version if flow.parent_flow_id is not None else None
        self.parent_flow_id = flow.parent_flow_id
        self.existed = False
        """True when start/branch found the flow already made for its idempotency key."""
        # A flow just created is known to be empty; anything else is read before use.
        self._state: FlowState | None = FlowState() if fresh else None
        self._stale = not fresh
        self._snapshot_version = 0
        self._lock = asyncio.Lock()
        self._artifacts = ArtifactCache(self._store, self.namespace)
        defaults = engine.settings.step_defaults
        self._planner = WritePlanner(
            self.flow_id, self.namespace, definition, engine.registry, self._artifacts, defaults
        )

    # -- reading ---------------------------------------------------------------------------

    async def state(self) -> FlowState:
        """The flow's state, replayed from the store now."""
        async with self._lock:
            self._stale = True
            return await self._sync()

    async def events(self) -> list[LoggedEvent]:
        out: list[LoggedEvent] = []
        async for chunk in self._store.read_events(
            self.namespace, self.flow_id, chunk_size=self._engine.settings.read_chunk_size
        ):
            out.extend(LoggedEvent(e.version, decode(e.type, e.payload_json), e) for e in chunk)
        return out

    async def event_variants(self) -> str:
        """The compact form of the log, e.g. ``ISFSFSFC``."""
        return "".join(e.variant for e in await self.events())

    async def flow_fingerprint(self) -> str | None:
        """The fingerprint FlowCompleted recorded, or None while the flow has not completed."""
        return (await self.state()).flow_fingerprint

    async def last_step_output(self, step_id: str) -> list[JsonValue] | None:
        """The output payloads of ``step_id``'s StepFinished, or None if it has not finished."""
        state = await self.state()
        step = state.step(step_id)
        if step is None:
            raise InvalidArgument.field("step_id", f"flow {self.flow_id} has no step {step_id!r}")
        if step.status is not StepStatus.FINISHED_OK:
            return None
        return [a.payload for a in await self._artifacts.values(step.output_hashes)]

    def remember(self, artifact_hash: str, payload: JsonValue) -> None:
        """Seed the artifact cache with a payload this process already holds."""
        self._artifacts.put(artifact_hash, payload)

    # -- advancing -------------------------------------------------------------------------

    @property
    def fencing_token(self) -> int:
        return self._fencing_token

    def attach_lease(self, fencing_token: int) -> None:
        """Write from now on under a lease claimed after this handle was made (a flow the
        caller just started, then claimed): saves attaching a new handle, which re-reads the
        flow. The cached state stays valid: appends still say which version they expect, so
        anything another writer did meanwhile is a conflict that re-reads the log. The token
        may only grow (tokens of a flow increase with every claim)."""
        if fencing_token <= self._fencing_token:
            raise InvalidArgument.field(
                "fencing_token", f"must be greater than the current {self._fencing_token}"
            )
        self._fencing_token = fencing_token

    @property
    def lease_lost(self) -> bool:
        """True once the store refused this run's fencing token (it writes nothing more)."""
        return self._lease_lost is not None

    async def initialize(
        self, init: FlowInitialized, artifacts: tuple[NewArtifact, ...]
    ) -> FlowInitialized:
        """Append FlowInitialized unless the log has one; returns the one recorded."""
        async with self._lock:
            self._check_lease()
            progress = Progress(self.flow_id)
            while True:
                state = await self._sync()
                progress.check(state.version)
                if state.init is not None:
                    return state.init
                write = Write(
                    (init,),
                    init_command_id(self.flow_id, self._generation),
                    artifacts,
                    FlowStatus.RUNNING,
                )
                if not await self._append(write):
                    progress.failed(state.version)

    async def assign_branch_params(
        self, event: PropertyPreferenceAssigned
    ) -> PropertyPreferenceAssigned | None:
        """Append a branch's first own event unless it has one; returns the first own event
        recorded if it is a params assignment, else None (a branch made another way)."""
        fork = self._fork_version
        if fork is None:
            raise FailedPrecondition(f"flow {self.flow_id} is not a branch", reason="NOT_A_BRANCH")
        async with self._lock:
            self._check_lease()
            progress = Progress(self.flow_id)
            while True:
                state = await self._sync()
                progress.check(state.version)
                if state.version > fork:
                    first = await self._event_at(fork + 1)
                    return first if isinstance(first, PropertyPreferenceAssigned) else None
                write = Write(
                    (event,),
                    branch_command_id(self.flow_id, self._generation),
                    new_status=FlowStatus.RUNNING,
                )
                if not await self._append(write):
                    progress.failed(state.version)

    async def next(self, *, start_next: bool = False) -> StepState | None:
        """Run the next step to its end (finished or failed, by this or another engine) and
        return its state; None when the flow has already ended.

        ``start_next``: record the following step's StepStarted in the same append as this
        step's StepFinished (what ``run_to_end`` does): one round trip less per step for a
        caller that goes on with the flow anyway. If it does not, the next ``next`` (here or
        on any engine) runs that started step, as after a crash.
        """
        return await self._next(chain=start_next)

    async def _next(self, *, chain: bool) -> StepState | None:
        async with self._lock:
            self._check_lease()
            target: int | None = None
            progress = Progress(self.flow_id)
            # The step outcome planned last, kept across a refused append: when the re-read
            # log still asks for the same step attempt (another writer appended something
            # else meanwhile), the step is not executed a second time.
            planned: tuple[plan.Action, int, Write] | None = None
            while True:
                state = await self._sync()
                progress.check(state.version)
                if target is not None and state.steps[target].status in (
                    StepStatus.FINISHED_OK,
                    StepStatus.FAILED,
                    StepStatus.SKIPPED,
                ):
                    return state.steps[target]
                action = plan.decide(state)
                if action is None:
                    return None
                if isinstance(action, plan.Initialize):
                    raise FailedPrecondition(
                        f"flow {self.flow_id} was created but never initialized: start it again "
                        "with the same idempotency key",
                        reason="FLOW_NOT_INITIALIZED",
                        metadata={"flow_id": self.flow_id},
                    )
                if self._fork_version is not None and state.version <= self._fork_version:
                    # Its params were never recorded: running it would silently use the parent's.
                    raise FailedPrecondition(
                        f"branch {self.flow_id} was created but never initialized: branch again "
                        "with the same idempotency key",
                        reason="BRANCH_NOT_INITIALIZED",
                        metadata={"flow_id": self.flow_id},
                    )
                if isinstance(action, plan.StartStep | plan.RunStep):
                    target = action.index
                if planned is not None and planned[:2] == (action, self._generation):
                    write = planned[2]
                else:
                    write = await self._planner.plan(state, action, self._generation, chain=chain)
                    planned = (action, self._generation, write)
                if not await self._append(write):
                    progress.failed(state.version)
                elif write.retry_delay_ms:
                    # Backoff inside the run, lease held (durable timers: a later slice).
                    await asyncio.sleep(write.retry_delay_ms / 1000)

    async def run_to_end(self) -> FlowState:
        """Advance until the flow completes or fails; returns the final state.

        Each step's StepFinished goes out with the next step's StepStarted in one append (the
        run is going on anyway): the log is the one ``next()`` would write, in fewer round trips.
        """
        while await self._next(chain=True) is not None:
            pass
        async with self._lock:
            return await self._sync()

    @property
    def current_state(self) -> FlowState | None:
        """The state as this handle last saw it (None before it first read the flow)."""
        return self._state

    # -- internals -------------------------------------------------------------------------

    def _check_lease(self) -> None:
        if self._lease_lost is not None:
            raise self._lease_lost

    async def _event_at(self, version: int) -> EngineEvent | None:
        found: list[StoredEvent] = []
        async for chunk in self._store.read_events(
            self.namespace, self.flow_id, after_version=version - 1, to_version=version
        ):
            found.extend(chunk)
        return decode(found[0].type, found[0].payload_json) if found else None

    async def _sync(self) -> FlowState:
        """The cached state, brought up to date from the store if it may be behind."""
        if self._state is not None and not self._stale:
            return self._state
        start = self._state
        if start is None:
            start = await self._load_start()
        tail: list[StoredEvent] = []
        async for chunk in self._store.read_events(
            self.namespace,
            self.flow_id,
            after_version=start.version,
            chunk_size=self._engine.settings.read_chunk_size,
        ):
            tail.extend(chunk)
        self._state = replay_stored(tail, start)
        self._stale = False
        return self._state

    async def _load_start(self) -> FlowState:
        """The latest usable snapshot, else the empty state (then the whole log is read)."""
        flow = await self._store.get_flow(self.namespace, self.flow_id)
        self._generation = flow.generation
        state = await snapshots.load_latest(self._store, self.namespace, self.flow_id)
        self._snapshot_version = state.version
        return state

    async def _append(self, write: Write) -> bool:
        """True when ``write`` was applied now; False when the log must be re-read first."""
        state = self._state
        assert state is not None
        assert not self._stale
        cmd = Append(
            namespace=self.namespace,
            flow_id=self.flow_id,
            expected_version=state.version,
            command_id=write.command_id,
            events=tuple(encode(e) for e in write.events),
            artifacts=write.artifacts,
            new_status=write.new_status,
            fencing_token=self._fencing_token,
        )
        try:
            result = await self._store.append(cmd)
        except FailedPrecondition as refused:
            self._stale = True
            if is_lease_lost(refused):
                self._lease_lost = LeaseLost(self.flow_id, self._fencing_token, refused.message)
                raise self._lease_lost from refused
            raise
        except VersionConflict as conflict:
            log.debug("flow %s: %s", self.flow_id, conflict.message)
            if conflict.current_version < state.version:
                self._state = None  # the log was cut (pruned): reload from scratch
            self._stale = True
            return False
        except BaseException:
            # The append may or may not have been applied: find out before deciding again.
            self._stale = True
            raise
        if result.duplicate or result.first_version != state.version + 1:
            self._stale = True
            return False
        versions = range(result.first_version, result.last_version + 1)
        self._state = replay(zip(versions, write.events, strict=True), state)
        if self.on_append is not None:
            self.on_append(_stored(cmd, result.seqs, versions))
        await self._maybe_snapshot(self._state)
        return True

    async def _maybe_snapshot(self, state: FlowState) -> None:
        self._snapshot_version = await snapshots.save_if_due(
            self._store,
            self.namespace,
            self.flow_id,
            state,
            self._engine.settings.snapshot_every,
            self._snapshot_version,
        )


def _stored(cmd: Append, seqs: tuple[int, ...], versions: range) -> tuple[StoredEvent, ...]:
    """The events of an applied append as the log holds them; ``ts`` is this process's clock
    (the append's answer does not carry the commit time)."""
    now = datetime.now(UTC)
    return tuple(
        StoredEvent(seq, cmd.flow_id, version, event.type, event.payload_json, now,
                    cmd.command_id)
        for seq, version, event in zip(seqs, versions, cmd.events, strict=True)
    )
