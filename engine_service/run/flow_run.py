"""A handle on one flow: advances it step by step and reads it (seed chem-core F3 §4 API).

The handle caches the replayed state and trusts it only as far as the store confirms: every
append says which version it expects, and anything unexpected (a conflict, a duplicate, an
error) marks the cache stale so that the next call re-reads the log before deciding.
Use one handle from one task at a time; its methods serialize on a lock anyway.

A handle given a fencing token sends it with every append; when the store answers that the
lease is lost, the handle raises :class:`~engine_service.run.lease.LeaseLost` and refuses to write
ever again (reading still works).

After every append this handle made that the store applied, the stored form of its events is
handed, without awaiting, to the engine's :attr:`~engine_service.run.engine.Engine.append_observer`
(the engine service feeds WatchFlow with it) and to this handle's own
:attr:`FlowRun.on_append`, when set.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from engine_service import metrics
from engine_service.core import decide as plan
from engine_service.core.events import FlowInitialized, PropertyPreferenceAssigned, StepStarted
from engine_service.core.ids import branch_command_id
from engine_service.core.replay import FlowState, StepState, StepStatus, replay, replay_stored
from engine_service.core.writes import (
    EVENTS_PER_FLOW_EXCEEDED,
    Suspend,
    Write,
    append_command,
    initial_write,
    keeps_outcome,
    out_of_room,
)
from engine_service.definitions.definition import FlowDefinition
from engine_service.planning import permanent
from engine_service.planning.artifacts import ArtifactCache
from engine_service.planning.planner import WritePlanner
from engine_service.planning.progress import Progress
from engine_service.planning.step_start import first_started
from engine_service.run import snapshots
from engine_service.run.flow_host import FlowHost
from engine_service.run.flow_log import FlowLog, stored_events
from engine_service.run.lease import LeaseLost, is_lease_lost
from flowledger.canonical import JsonValue
from flowledger.errors import (
    FailedPrecondition,
    FlowledgerError,
    InvalidArgument,
    ResourceExhausted,
    VersionConflict,
)
from flowledger_core.domain import (
    Append,
    AppendResult,
    Flow,
    FlowLease,
    FlowStatus,
    NewArtifact,
    StoredEvent,
)

log = logging.getLogger(__name__)



class Appended(enum.Enum):
    APPLIED = "applied"  # written now
    STALE = "stale"  # refused (conflict) or applied by someone else: re-read and decide again
    DUPLICATE = "duplicate"  # this very command was applied earlier


class FlowRun(FlowLog):
    """One flow, seen through its log. Made by :meth:`Engine.start` / :meth:`Engine.attach`."""

    def __init__(
        self,
        engine: FlowHost,
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
        self._generation_fresh = True  # ``flow`` was just read: the first load skips GetFlow
        self._fencing_token = fencing_token
        self._lease_lost: LeaseLost | None = None
        self.on_append: Callable[[tuple[StoredEvent, ...]], None] | None = None
        """Called with the events of each append this handle made and the store applied."""
        # A branch's own log starts after the parent's prefix, with its params assignment.
        self._fork_version = flow.fork_version if flow.parent_flow_id is not None else None
        self.parent_flow_id = flow.parent_flow_id
        self.existed = False
        """True when start/branch found the flow already made for its idempotency key."""
        self.lease: FlowLease | None = None
        """The lease the store granted with the flow's creation (``Engine.start(lease=...)``)."""
        # A flow just created is known to be empty; anything else is read before use.
        self._state: FlowState | None = FlowState() if fresh else None
        self._stale = not fresh
        self._snapshot_version = 0
        self._lock = asyncio.Lock()
        # (index, attempt) of the StepStarted this handle appended: a RunStep of any other is
        # a re-execution (metrics.STEP_REEXECUTIONS).
        self._started_here: set[tuple[int, int]] = set()
        # Set by the work loop when this run's lease took over one that expired unreleased:
        # an attempt started before it may have run, in part or whole, under that lease.
        self.takes_over = False
        self._artifacts = ArtifactCache(self._store, self.namespace)
        self._chunk_size = engine.settings.read_chunk_size
        settings = engine.settings
        self._planner = WritePlanner(
            self.flow_id, self.namespace, definition, engine.registry, self._artifacts,
            settings.step_defaults, clock=settings.clock, inline_wait_ms=settings.inline_wait_ms,
        )  # fmt: skip
        self.suspension: Suspend | None = None
        """Set when the last ``next`` stopped because the flow waits (a timer, a signal, a
        task); the flow is WAITING in the store and this run writes nothing more for now."""

    # -- reading ---------------------------------------------------------------------------

    async def state(self) -> FlowState:
        """The flow's state, replayed from the store now."""
        async with self._lock:
            self._stale = True
            return await self._sync()

    def remember(self, artifact_hash: str, payload: JsonValue) -> None:
        """Seed the artifact cache with a payload this process already holds."""
        self._artifacts.put(artifact_hash, payload)

    # -- advancing -------------------------------------------------------------------------

    @property
    def fencing_token(self) -> int:
        return self._fencing_token

    @property
    def planner(self) -> WritePlanner:
        """What plans this flow's writes (for outcomes that arrive from outside the run: an
        external worker's task result)."""
        return self._planner

    @property
    def generation(self) -> int:
        return self._generation

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
        self,
        init: FlowInitialized,
        artifacts: tuple[NewArtifact, ...],
        *,
        start_first: bool = False,
    ) -> FlowInitialized:
        """Append FlowInitialized unless the log has one; returns the one recorded.

        ``start_first``: the first step's StepStarted goes in the same append when it may
        (:func:`~engine_service.planning.step_start.first_started`), for a caller that runs the flow
        at once.
        """

        async def build(state: FlowState) -> Write | None:
            if state.init is not None:
                return None
            started = first_started(init, self._planner.clock) if start_first else None
            return initial_write(self.flow_id, self._generation, init, artifacts, started)

        await self.append_planned(build)
        recorded = (await self._current()).init
        assert recorded is not None  # appended now, or found
        return recorded

    async def assign_branch_params(
        self, event: PropertyPreferenceAssigned
    ) -> PropertyPreferenceAssigned | None:
        """Append a branch's first own event unless it has one; returns the first own event
        recorded if it is a params assignment, else None (a branch made another way)."""
        fork = self._fork_version
        if fork is None:
            raise FailedPrecondition(f"flow {self.flow_id} is not a branch", reason="NOT_A_BRANCH")

        async def build(state: FlowState) -> Write | None:
            if state.version > fork:
                return None
            command = branch_command_id(self.flow_id, self._generation)
            return Write((event,), command, new_status=FlowStatus.RUNNING)

        await self.append_planned(build)
        first = await self._event_at(fork + 1)
        return first if isinstance(first, PropertyPreferenceAssigned) else None

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
            self.suspension = None
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
                    raise _never_initialized(self.flow_id, "flow", "start", "FLOW_NOT_INITIALIZED")
                if self._fork_version is not None and state.version <= self._fork_version:
                    # Its params were never recorded: running it would silently use the parent's.
                    raise _never_initialized(
                        self.flow_id, "branch", "branch", "BRANCH_NOT_INITIALIZED"
                    )
                if isinstance(action, plan.StartStep | plan.RunStep):
                    target = action.index
                if isinstance(action, plan.RunStep) and planned is None:
                    self._count_reexecution(state, action)
                if planned is not None and planned[:2] == (action, self._generation):
                    write = planned[2]
                else:
                    try:
                        planned_now = await self._planner.plan(
                            state, action, self._generation, chain=chain
                        )
                    except FlowledgerError as exc:
                        if not await self._end_for_good(exc, permanent.artifact_error_type(exc)):
                            raise
                        continue
                    if isinstance(planned_now, Suspend):
                        if await self._wait_inline(planned_now.until):
                            continue
                        self.suspension = planned_now
                        return state.steps[target] if target is not None else None
                    write = planned_now
                    if keeps_outcome(state, action):
                        planned = (action, self._generation, write)
                try:
                    appended = await self._append_or_end(write)
                except FlowledgerError as exc:
                    if not await self._end_for_good(exc, permanent.refused_write_type(exc)):
                        raise
                    continue
                if appended is not Appended.APPLIED:
                    progress.failed(state.version)
                elif write.suspends:
                    if not await self._wait_inline(write.wake_at):
                        self.suspension = Suspend(write.wake_at)
                        after = await self._sync()  # the append just applied: cached
                        return after.steps[target] if target is not None else None
                elif write.retry_delay_ms:
                    # A short backoff waits inside the run, lease held; a longer one suspends.
                    await asyncio.sleep(write.retry_delay_ms / 1000)

    def _count_reexecution(self, state: FlowState, action: plan.RunStep) -> None:
        """A step attempt another run started (it died, paused past its lease or lost the
        store) runs again here, with the same idempotency key: count it, by step type."""
        if not self.takes_over or state.init is None:
            return
        if (action.index, action.attempt) in self._started_here:
            return
        step = state.init.steps[action.index]
        metrics.STEP_REEXECUTIONS.labels(step.type).inc()
        log.info("flow %s: step %s attempt %d runs again (started before this run: a takeover "
                 "or a restart); same idempotency key", self.flow_id, step.id, action.attempt)

    async def _append_or_end(self, write: Write) -> Appended:
        """``_append``; when the log has reached the store's events-per-flow limit, FlowFailed
        instead (the store lets the append that ends a flow pass its limit once)."""
        try:
            return await self._append(write)
        except ResourceExhausted as full:
            if full.reason != EVENTS_PER_FLOW_EXCEEDED:
                raise
            state = await self._sync()
            if state.terminal:
                return Appended.STALE  # someone else ended it meanwhile
            return await self._append(out_of_room(self.flow_id, state, self._generation, full))

    async def _end_for_good(self, exc: FlowledgerError, error_type: str | None) -> bool:
        """End the flow FAILED on an error no attempt gets past (``error_type`` given, see
        :mod:`engine_service.planning.permanent`); False for any other error (the caller raises
        it)."""
        if error_type is None:
            return False
        log.error("flow %s: %s (%s); the flow fails", self.flow_id, exc.message, exc.reason)
        state = await self._sync()
        if not state.terminal:
            await self._append(
                permanent.ending_write(self.flow_id, state, self._generation, exc, error_type)
            )
        return True

    async def run_to_end(self, *, wait_timers: bool = True) -> FlowState:
        """Advance until the flow completes, fails or is cancelled, or waits for a signal or
        an external worker (then ``suspension`` is set); returns the state. Timers (wait
        steps, long retry backoffs) are slept through here unless ``wait_timers`` is False.

        Each step's StepFinished goes out with the next step's StepStarted in one append (the
        run is going on anyway): the log is the one ``next()`` would write, in fewer round trips.
        """
        while await self._next(chain=True) is not None:
            if self.suspension is None:
                continue
            until = self.suspension.until
            if until is None or not wait_timers:
                break  # waits for a signal or a worker: the caller resumes it later
            await asyncio.sleep(max(0.0, (until - self._engine.settings.clock()).total_seconds()))
        async with self._lock:
            return await self._sync()

    async def append_planned(
        self, build: Callable[[FlowState], Awaitable[Write | None]]
    ) -> tuple[Write | None, Appended]:
        """Append what ``build`` plans from the flow's current state (None: nothing to write),
        reading the log again and re-planning after a conflict. For writes made on behalf of a
        caller rather than by running the flow: a signal, a cancel, a worker's task outcome."""
        async with self._lock:
            self._check_lease()
            progress = Progress(self.flow_id)
            while True:
                state = await self._sync()
                progress.check(state.version)
                write = await build(state)
                if write is None:
                    return None, Appended.STALE
                outcome = await self._append(write)
                if outcome is not Appended.STALE:
                    return write, outcome
                progress.failed(state.version)

    async def _wait_inline(self, until: datetime | None) -> bool:
        """Sleep through a wait that ends within ``inline_wait_ms`` (cheaper than letting go of
        the flow and claiming it again); False when the wait is longer (or has no end)."""
        if until is None:
            return False
        settings = self._engine.settings
        remaining = (until - settings.clock()).total_seconds()
        if remaining * 1000 > settings.inline_wait_ms:
            return False
        await asyncio.sleep(max(0.0, remaining))
        self._stale = True  # the wait may have been ended by someone else meanwhile
        return True

    @property
    def current_state(self) -> FlowState | None:
        """The state as this handle last saw it (None before it first read the flow)."""
        return self._state

    # -- internals -------------------------------------------------------------------------

    async def _current(self) -> FlowState:
        async with self._lock:
            return await self._sync()

    def _check_lease(self) -> None:
        if self._lease_lost is not None:
            raise self._lease_lost

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
        if not self._generation_fresh:
            # A reload (the log was cut by a prune): the generation may have moved on.
            flow = await self._store.get_flow(self.namespace, self.flow_id)
            self._generation = flow.generation
        self._generation_fresh = False
        state = await snapshots.load_latest(self._store, self.namespace, self.flow_id)
        self._snapshot_version = state.version
        return state

    async def created(self, write: Write, cmd: Append, result: AppendResult) -> None:
        """Take ``write`` as appended by this handle: the create call that made the flow
        appended it (``cmd``, answered with ``result``) in the same transaction."""
        async with self._lock:
            state = self._state
            assert state is not None
            assert state.version == 0
            assert result.first_version == 1
            await self._applied(write, cmd, result, state)

    async def _append(self, write: Write) -> Appended:
        """Whether ``write`` was applied now; otherwise the log must be re-read first."""
        state = self._state
        assert state is not None
        assert not self._stale
        cmd = append_command(self.namespace, self.flow_id, state.version, write,
                             self._fencing_token)  # fmt: skip
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
            return Appended.STALE
        except BaseException:
            # The append may or may not have been applied: find out before deciding again.
            self._stale = True
            raise
        if result.duplicate or result.first_version != state.version + 1:
            self._stale = True
            return Appended.DUPLICATE if result.duplicate else Appended.STALE
        await self._applied(write, cmd, result, state)
        return Appended.APPLIED

    async def _applied(
        self, write: Write, cmd: Append, result: AppendResult, state: FlowState
    ) -> None:
        """Bring the cached state, the planner, watchers, hooks and snapshots up to ``write``,
        which the store applied right after ``state``."""
        versions = range(result.first_version, result.last_version + 1)
        self._started_here.update(
            (e.index, e.attempt) for e in write.events if isinstance(e, StepStarted)
        )
        self._state = replay(zip(versions, write.events, strict=True), state)
        self._planner.applied(write)
        observer = self._engine.append_observer
        if observer is not None or self.on_append is not None:
            appended = stored_events(cmd, result.seqs, versions)
            if observer is not None:
                observer(self.namespace, self.flow_id, appended)
            if self.on_append is not None:
                self.on_append(appended)
        if self._engine.hooks:
            versioned = list(zip(versions, write.events, strict=True))
            await self._engine.hooks.dispatch(self.namespace, self.flow_id, versioned)
        await self._maybe_snapshot(self._state)

    async def _maybe_snapshot(self, state: FlowState) -> None:
        self._snapshot_version = await snapshots.save_if_due(
            self._store,
            self.namespace,
            self.flow_id,
            state,
            self._engine.settings.snapshot_every,
            self._snapshot_version,
        )


def _never_initialized(flow_id: str, what: str, again: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{what} {flow_id} was created but never initialized: {again} it again with the same "
        "idempotency key",
        reason=reason,
        metadata={"flow_id": flow_id},
    )
