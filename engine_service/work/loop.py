"""The work loop of one engine replica: claim runnable flows with leases, run them, heartbeat.

* **Claims.** Every ``poll_ms`` (at once again while claims come back full) the loop asks the
  store for up to ``claim_batch`` runnable flows (``ClaimFlows``: queued or running, lease free
  or expired, ``FOR UPDATE SKIP LOCKED``), never more than its free slots
  (``max_concurrent_flows``). The replica that receives a StartFlow, when it has a free slot
  (:meth:`WorkLoop.start_slot`), has the store lease the flow to it as it creates it and runs it
  at once with the handle that created it (:meth:`WorkLoop.adopt`): no claim, no re-read, no
  poll. Without a free slot the flow is created unleased and claimed by whoever has room.
* **Watchers.** While a flow runs here, every append it makes is pushed to the flow's local
  watchers (:class:`~engine_service.work.notifier.FlowNotifier`, fed by the engine's append
  observer), who then need not read the store; the notifier is told when the run ends.
* **Fencing.** Each claim carries a fencing token, larger than any earlier one of the flow; the
  run appends with it, so once another replica has claimed the flow (our lease expired) the
  store refuses our writes (FAILED_PRECONDITION, reason LEASE_LOST).
* **Heartbeats.** Every ``heartbeat_ms`` the lease is renewed, at once when less than a
  heartbeat is left. The replica keeps a local expiry dated from what the store granted: the
  lease's ``remaining_ms`` by the store's clock, counted from when the answer *arrived* (a claim
  or renewal that waited out an outage or a slow store is not spent on arrival; issue 22); from
  an older store that does not say, the call's send time + lease. When a renewal says
  LEASE_LOST, or the local expiry passes without a successful renewal (store unreachable, process
  paused), the run is cancelled at once. No step starts with less than a heartbeat of lease left:
  the run waits for a renewal first. A step function still running in a thread cannot be
  killed; its result is dropped, and its write would be refused anyway.
* **End of a run.** Completed, failed or cancelled: the append that ended the flow released
  the lease (store.proto), nothing more to do. Waiting (a timer, a signal, a task: the store
  makes it claimable again, decision 0013): the lease is released. Lease lost: nothing
  (it is not ours). A flow no attempt can get past (an artifact it reads is corrupt or gone,
  an append the store refuses as invalid or too large) is not retried: the run ends it FAILED
  with that error (:mod:`engine_service.planning.permanent`). A flow this replica cannot run
  (unknown step types, another fingerprint scheme, a corrupt log): the lease is kept until it
  expires, so the flow is retried once per lease period (by whichever replica can) rather than in a
  hot loop.
* **Drain** (SIGTERM): stop claiming; runs stop at their next step boundary and release their
  lease, so another replica continues at once; runs still busy after the grace are cancelled
  and released.

The store being unreachable never stops the loop: claims fail after the store client's retry
budget, are logged, and are tried again on the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from engine_service import metrics
from engine_service.core.replay import FlowState, StepState, StepStatus
from engine_service.run.engine import Engine, FlowRun
from engine_service.run.lease import is_lease_lost
from engine_service.run.tasks import TaskBell
from engine_service.work.notifier import FlowNotifier
from flowledger.errors import Aborted, DeadlineExceeded, FlowledgerError, Unavailable
from flowledger_core.domain import ClaimRequest, FlowLease

log = logging.getLogger(__name__)

# Raised by a run that claimed a flow (or branch) before its creator's first append: the
# creator is about to make it, or died between its two writes.
_NOT_INITIALIZED = frozenset({"FLOW_NOT_INITIALIZED", "BRANCH_NOT_INITIALIZED"})
# A flow claimed before its creator appended FlowInitialized is released (the creator is about
# to initialize it) while it is this young; older, it is an orphan and its lease runs out.
_UNINITIALIZED_GRACE_S = 60.0
_RELEASE_TIMEOUT_S = 2.0


class WorkSettings(Protocol):
    """What the work loop reads of the replica's settings
    (:class:`engine_service.settings.ServiceSettings` is one)."""

    @property
    def engine_id(self) -> str: ...
    @property
    def lease_ms(self) -> int: ...
    @property
    def heartbeat_ms(self) -> int: ...
    @property
    def claim_batch(self) -> int: ...
    @property
    def poll_ms(self) -> int: ...
    @property
    def max_concurrent_flows(self) -> int: ...
    @property
    def namespaces(self) -> tuple[str, ...]: ...


@dataclass(eq=False)
class _Claimed:
    lease: FlowLease
    # Monotonic time by which the lease expires unless renewed (see the module docstring).
    expires_at: float
    # The handle of a flow this replica just created: run it instead of attaching anew.
    run: FlowRun | None = None
    task: asyncio.Task[None] | None = None
    lost: bool = False
    abandoned: bool = False
    reason: str = field(default="")
    # The run asks the heartbeat for a renewal now (``renew_now``) and waits for ``renewed``.
    renew_now: asyncio.Event = field(default_factory=asyncio.Event)
    renewed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, str]:
        return self.lease.flow.namespace, self.lease.flow.flow_id


class WorkLoop:
    def __init__(self, engine: Engine, settings: WorkSettings, notifier: FlowNotifier) -> None:
        self._engine = engine
        self._store = engine.store
        self._settings = settings
        self._notifier = notifier
        self._lease_s = settings.lease_ms / 1000
        self._runs: dict[tuple[str, str], _Claimed] = {}
        self._reserved = 0
        self._wake = asyncio.Event()
        self._saturated = False
        self._stopping = False
        self._draining = False
        self._loop: asyncio.Task[None] | None = None
        self._claim_errors = 0
        self._releases: set[asyncio.Task[None]] = set()
        self.task_bell = TaskBell()

    @property
    def owner(self) -> str:
        return self._settings.engine_id

    @property
    def running(self) -> int:
        return len(self._runs)

    def free_slots(self) -> int:
        return max(0, self._settings.max_concurrent_flows - len(self._runs) - self._reserved)

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._poll_loop(), name="flowledger-claim-loop")

    @contextlib.contextmanager
    def start_slot(self) -> Iterator[tuple[str, int] | None]:
        """A run slot held while this replica creates a flow it means to run at once: yields
        the (owner, lease_ms) to lease the flow with as it is created, or None when no slot is
        free (or the replica stops): then the flow is created unleased and claimed later."""
        if self._stopping or self.free_slots() == 0:
            yield None
            return
        self._reserved += 1
        try:
            yield self.owner, self._settings.lease_ms
        finally:
            self._reserved -= 1

    def adopt(self, run: FlowRun, sent: float) -> bool:
        """Run in the background a flow this replica created leased (``run.lease``, asked for
        with :meth:`start_slot`; ``sent``: the monotonic time the create call was sent, from
        which the lease's local expiry is counted). False when ``run`` has no lease."""
        lease = run.lease
        if lease is None or (lease.flow.namespace, lease.flow.flow_id) in self._runs:
            return False
        self._launch(lease, "start", sent, run)
        return True

    async def run_now(self, namespace: str, flow_id: str, run: FlowRun | None = None) -> bool:
        """Claim a flow this replica just started and run it in the background (with ``run``,
        the handle that created it, when given). False when it was not claimed here (no free
        slot, another replica holds it, or it already ended)."""
        if self._stopping or (namespace, flow_id) in self._runs:
            return False
        if self.free_slots() == 0:
            self._saturated = True
            self._wake.set()
            return False
        leases = await self._claim(
            ClaimRequest(self.owner, 1, self._settings.lease_ms, (namespace,), (flow_id,)),
            "start",
            run,
        )
        return bool(leases)

    # -- claiming ----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        poll_s = self._settings.poll_ms / 1000
        while not self._stopping:
            # Cleared before claiming, so that a slot freed meanwhile wakes the next wait.
            self._wake.clear()
            free = self.free_slots()
            self._saturated = free == 0
            if free:
                limit = min(free, self._settings.claim_batch)
                request = ClaimRequest(
                    self.owner, limit, self._settings.lease_ms, self._settings.namespaces
                )
                try:
                    leases = await self._claim(request, "poll")
                except Exception:
                    # Never let the loop die: a replica that stops claiming is a silent outage.
                    log.exception("the claim loop failed; retrying after a poll interval")
                    leases = ()
                if len(leases) == limit and not self._stopping:
                    self._saturated = True
                    continue  # more work is probably waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll_s)

    async def _claim(
        self, request: ClaimRequest, source: str, run: FlowRun | None = None
    ) -> tuple[FlowLease, ...]:
        self._reserved += request.limit
        sent = time.monotonic()
        try:
            leases = await self._store.claim_flows(request)
        except FlowledgerError as exc:
            self._claim_errors += 1
            # Once per outage at WARNING, then quietly: the loop retries every poll.
            level = logging.WARNING if self._claim_errors == 1 else logging.DEBUG
            log.log(level, "claiming flows failed (%s): %s", exc.reason, exc.message)
            return ()
        finally:
            self._reserved -= request.limit
        if self._claim_errors:
            log.info("claiming flows works again after %d failures", self._claim_errors)
            self._claim_errors = 0
        for lease in leases:
            mine = run is not None and (run.namespace, run.flow_id) == (
                lease.flow.namespace, lease.flow.flow_id
            )
            self._launch(lease, source, sent, run if mine else None)
        return leases

    def _launch(
        self, lease: FlowLease, source: str, sent: float, run: FlowRun | None = None
    ) -> None:
        entry = _Claimed(lease, expires_at=self._expiry(lease, sent), run=run)
        metrics.LEASE_CLAIMS.labels(source).inc()
        if lease.previous_owner:
            # The store says the previous lease expired unreleased: a real takeover (not a
            # start, nor a resume after a wait, whose leases were never held or were released).
            metrics.LEASE_TAKEOVERS.inc()
            log.info("flow %s: taking over from %s (token %d)", lease.flow.flow_id,
                     lease.previous_owner, lease.fencing_token)
        if self._stopping:
            # Claimed while stopping: give it straight back.
            release = asyncio.create_task(self._release(entry))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            return
        previous = self._runs.get(entry.key)
        if previous is not None:
            # Our own older lease of this flow expired and we claimed it again: the old run
            # can no longer write; stop it.
            self._lose(previous, "claimed again under a newer lease")
        entry.task = asyncio.create_task(
            self._run(entry), name=f"flow-{lease.flow.namespace}/{lease.flow.flow_id}"
        )
        self._runs[entry.key] = entry
        metrics.FLOWS_RUNNING.set(len(self._runs))

    # -- running -----------------------------------------------------------------------------

    async def _run(self, entry: _Claimed) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(entry))
        release = False
        try:
            with self._notifier.producing(*entry.key):
                release = await self._advance(entry)
        except asyncio.CancelledError:
            if not (entry.lost or entry.abandoned):
                raise  # a hard stop (close): leave the lease to expire
            task = asyncio.current_task()
            while task is not None and task.cancelling():
                task.uncancel()  # handled: lost and abandon may both have asked
            release = entry.abandoned and not entry.lost
            if entry.lost:
                log.warning("flow %s: run stopped, lease lost (%s)", entry.key[1], entry.reason)
        except FlowledgerError as exc:
            release = self._after_error(entry, exc)
        except Exception:
            log.exception("flow %s: run failed unexpectedly; retried when its lease expires",
                          entry.key[1])
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        try:
            if release and not entry.lost:
                await self._release(entry)
        finally:
            if self._runs.get(entry.key) is entry:
                del self._runs[entry.key]
            metrics.FLOWS_RUNNING.set(len(self._runs))
            if self._saturated:
                self._wake.set()  # a slot freed while work was waiting

    async def _advance(self, entry: _Claimed) -> bool:
        """Run the flow to its end (or to the next step boundary once draining); True when
        the lease should be released (not when the flow ended: that append released it)."""
        flow = entry.lease.flow
        token = entry.lease.fencing_token
        run = entry.run
        entry.run = None  # not kept past this run
        if run is not None and run.fencing_token <= token and run.current_state is not None:
            if run.fencing_token < token:
                run.attach_lease(token)
        else:
            started = time.perf_counter()
            run = await self._engine.attach(
                flow.flow_id, namespace=flow.namespace, fencing_token=token
            )
            metrics.REPLAY_DURATION.observe(time.perf_counter() - started)
        run.takes_over = bool(entry.lease.previous_owner)
        state = run.current_state
        assert state is not None  # attach replays
        if state.terminal:
            return False  # the append that ended it released the lease (store.proto)
        while not self._draining:
            await self._lease_for_a_step(entry)
            step_started = time.perf_counter()
            # StepStarted of the following step rides with this step's StepFinished, unless
            # this replica is about to stop (then the next owner starts it).
            step = await run.next(start_next=not self._draining)
            if step is None:
                break
            if run.suspension is not None:
                if step.task_id is not None:
                    self.task_bell.ring()  # a worker polling here may take it now
                break  # the flow waits (WAITING in the store, wake_at set): let go of it
            _observe_step(run.current_state, step, time.perf_counter() - step_started)
        final = run.current_state
        if final is not None and final.completed:
            metrics.FLOWS_COMPLETED.inc()
        elif final is not None and final.failed:
            metrics.FLOWS_FAILED.inc()
        # An ended flow's lease went with the append that ended it: nothing to release.
        return not (final is not None and final.terminal)

    def _after_error(self, entry: _Claimed, exc: FlowledgerError) -> bool:
        """Log what stopped a run; True when its lease should be released."""
        flow = entry.lease.flow
        if is_lease_lost(exc):
            entry.lost = True
            metrics.LEASES_LOST.inc()
            log.warning("flow %s: write refused, lease lost: %s", flow.flow_id, exc.message)
            return False
        if exc.reason in _NOT_INITIALIZED:
            age = (datetime.now(UTC) - flow.created_at).total_seconds()
            return age < _UNINITIALIZED_GRACE_S
        if isinstance(exc, Unavailable | DeadlineExceeded | Aborted):
            log.warning("flow %s: run interrupted (%s): %s", flow.flow_id, exc.reason, exc.message)
            return True
        log.error("flow %s cannot run on this replica (%s): %s; retried when its lease expires",
                  flow.flow_id, exc.reason, exc.message)
        return False

    # -- leases ------------------------------------------------------------------------------

    def _expiry(self, lease: FlowLease, sent: float) -> float:
        """The local (monotonic) expiry of a lease the store just granted or renewed: what it
        says is left, from now; from a store that does not say, from when the call was sent."""
        if lease.remaining_ms is None:
            return sent + self._lease_s
        return time.monotonic() + lease.remaining_ms / 1000

    async def _lease_for_a_step(self, entry: _Claimed) -> None:
        """Return once at least a heartbeat of lease is left (asking for a renewal if not), so
        that no step starts on a lease about to run out; lose the run if it cannot be had."""
        period = self._settings.heartbeat_ms / 1000
        while entry.expires_at - time.monotonic() < period:
            left = entry.expires_at - time.monotonic()
            entry.renewed.clear()
            entry.renew_now.set()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    await entry.renewed.wait()
            except TimeoutError:
                self._lose(entry, "it ran out before a step could start")
                raise asyncio.CancelledError from None
            if entry.lost:
                raise asyncio.CancelledError

    async def _heartbeat(self, entry: _Claimed) -> None:
        period = self._settings.heartbeat_ms / 1000
        lease = entry.lease
        while True:
            # Every period, and at once when less than a period would be left by then.
            due = max(0.0, min(period, entry.expires_at - time.monotonic() - period))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due):
                    await entry.renew_now.wait()
            entry.renew_now.clear()
            sent = time.monotonic()
            remaining = entry.expires_at - sent
            if remaining <= 0:
                self._lose(entry, "it expired before it could be renewed")
                return
            try:
                async with asyncio.timeout(remaining):
                    renewed = await self._store.renew_lease(
                        lease.flow.namespace, lease.flow.flow_id, self.owner,
                        lease.fencing_token, self._settings.lease_ms,
                    )
            except TimeoutError:
                self._lose(entry, "it expired while the store did not answer")
                return
            except FlowledgerError as exc:
                if is_lease_lost(exc):
                    metrics.LEASE_RENEWALS.labels("lost").inc()
                    self._lose(entry, exc.message)
                    return
                metrics.LEASE_RENEWALS.labels("error").inc()
                log.warning("flow %s: renewing the lease failed: %s", lease.flow.flow_id,
                            exc.message)
                await asyncio.sleep(min(period, max(0.0, entry.expires_at - time.monotonic())))
                continue
            metrics.LEASE_RENEWALS.labels("ok").inc()
            entry.expires_at = self._expiry(renewed, sent)
            entry.renewed.set()

    def _lose(self, entry: _Claimed, reason: str) -> None:
        if entry.lost:
            return
        entry.lost = True
        entry.reason = reason
        metrics.LEASES_LOST.inc()
        if entry.task is not None and entry.task is not asyncio.current_task():
            entry.task.cancel()

    async def _release(self, entry: _Claimed) -> None:
        lease = entry.lease
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                await self._store.release_lease(
                    lease.flow.namespace, lease.flow.flow_id, lease.fencing_token
                )
        except (FlowledgerError, TimeoutError) as exc:
            # The lease then simply expires.
            log.debug("flow %s: releasing the lease failed: %s", lease.flow.flow_id, exc)

    # -- stopping ----------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop claiming; let runs reach their next step boundary within ``grace`` seconds,
        cancel the rest; every lease still ours is released."""
        self._stopping = True
        self._draining = True
        self._wake.set()
        if self._loop is not None:
            # A claim in flight normally answers in milliseconds; one stuck on an unreachable
            # store is abandoned (whatever it may have claimed expires by itself).
            await asyncio.wait({self._loop}, timeout=_RELEASE_TIMEOUT_S)
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        tasks = [e.task for e in self._runs.values() if e.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("abandoning %d flow run(s) still busy after %.1fs",
                            len(pending), grace)
                self.hurry()
                await asyncio.wait(pending, timeout=_RELEASE_TIMEOUT_S + 1)
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=_RELEASE_TIMEOUT_S + 1)

    def hurry(self) -> None:
        """Abandon every run now (a second SIGTERM): each releases its lease and ends."""
        for entry in list(self._runs.values()):
            if entry.task is not None and not entry.task.done():
                entry.abandoned = True
                entry.task.cancel()

    async def close(self) -> None:
        """Stop at once (no release): what a crash would leave, minus the process exit."""
        self._stopping = True
        self._wake.set()
        tasks = [e.task for e in self._runs.values() if e.task is not None]
        tasks.extend(self._releases)
        if self._loop is not None:
            tasks.append(self._loop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _observe_step(state: FlowState | None, step: StepState, seconds: float) -> None:
    step_type = "unknown"
    if state is not None and state.init is not None:
        for spec in state.init.steps:
            if spec.id == step.step_id:
                step_type = spec.type
    outcome = "finished" if step.status is StepStatus.FINISHED_OK else "failed"
    metrics.STEP_DURATION.labels(step_type, outcome).observe(seconds)

