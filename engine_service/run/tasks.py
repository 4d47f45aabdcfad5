"""External step workers: a ``task`` step's attempt, leased to a worker through the flow's lease.

A flow whose current step is a task waits on its queue (status WAITING, ``task_queue`` set, see
:mod:`engine_service.planning.waits`). ``poll`` claims such a flow for the worker with
``ClaimFlows(task_queues=...)``: the worker then holds the flow's work lease, and its token
fences what it reports, exactly as an engine replica's token fences its appends. An expired
lease makes the flow claimable by the next poll (the task is re-queued); a completion under a
token that was taken over is refused (LEASE_LOST); the same completion twice is answered as a
duplicate. The outcome is planned like a step function's (retries, continue_on_error,
compensation, the next step started in the same append) — docs/decisions/0013-durable-waits.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from engine_service.core.events import StepAttemptFailed, StepFailed, StepFinished
from engine_service.core.replay import FlowState, StepStatus
from engine_service.core.step_inputs import inputs_of
from engine_service.core.writes import EVENTS_PER_FLOW_EXCEEDED, Write
from engine_service.planning import permanent
from engine_service.run.engine import Engine
from engine_service.run.flow_run import Appended, FlowRun
from engine_service.run.interventions import fail_out_of_room
from engine_service.run.lease import LeaseLost
from engine_service.steps.builtin import TASK
from engine_service.steps.context import StepFailure
from engine_service.steps.executor import Outcome, prepare
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import (
    FailedPrecondition,
    FlowledgerError,
    InvalidArgument,
    ResourceExhausted,
)
from flowledger_core.domain import ClaimRequest

# A poll that finds nothing looks again after this, doubling up to the maximum while the queues
# stay empty (idle workers then cost ~1 claim/s each); a task scheduled on this replica rings
# the bell and wakes its pollers at once.
_POLL_INTERVAL_S = 0.05
_MAX_POLL_INTERVAL_S = 1.0


class TaskBell:
    """Rung when this replica puts a flow on a task queue: wakes the pollers waiting here."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # the next waiters wait for the next ring

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


@dataclass(frozen=True)
class LeasedTask:
    task_id: str
    namespace: str
    flow_id: str
    step_id: str
    attempt: int
    queue: str
    params_json: str
    inputs_json: str
    lease_token: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.flow_id}:{self.step_id}:{self.attempt}"


async def poll(
    engine: Engine,
    namespace: str,
    queues: tuple[str, ...],
    worker_id: str,
    lease_ms: int,
    wait_ms: int,
    bell: TaskBell | None = None,
) -> LeasedTask | None:
    """Lease a task of ``queues`` (waiting up to ``wait_ms`` for one), or None."""
    if not queues:
        raise InvalidArgument.field("queues", "name at least one queue")
    if not 0 <= wait_ms <= 60_000:
        raise InvalidArgument.field("wait_ms", "must be 0..60000")
    deadline = time.monotonic() + wait_ms / 1000
    request = ClaimRequest(worker_id, 1, lease_ms, (namespace,), task_queues=queues)
    interval = _POLL_INTERVAL_S
    while True:
        for lease in await engine.store.claim_flows(request):
            task = await _task_of(engine, lease.flow.namespace, lease.flow.flow_id,
                                  lease.fencing_token)
            if task is not None:
                return task
            # Claimed, but its task is gone (completed or cancelled meanwhile): let it go.
            await engine.store.release_lease(namespace, lease.flow.flow_id, lease.fencing_token)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # Bounded: a poll that found nothing looks again, until its wait is over.
        if bell is None:
            await asyncio.sleep(min(interval, remaining))
        else:
            await bell.wait(min(interval, remaining))
        interval = min(interval * 2, _MAX_POLL_INTERVAL_S)


async def _task_of(engine: Engine, namespace: str, flow_id: str, token: int) -> LeasedTask | None:
    run = await engine.attach(flow_id, namespace=namespace, fencing_token=token)
    state = run.current_state
    assert state is not None
    index = _waiting_task(state)
    if index is None:
        return None
    assert state.init is not None
    step = state.steps[index]
    assert step.task_id is not None
    assert step.task_queue is not None
    try:
        inputs = await run.planner.payloads(inputs_of(state, index))
    except FlowledgerError as exc:
        error_type = permanent.artifact_error_type(exc)
        if error_type is None:
            raise
        # Its inputs can never be read again: the flow fails (once) instead of being leased
        # to, and refused by, every poll. The append that ends it releases the lease.
        await run.append_planned(_ending(flow_id, run.generation, exc, error_type))
        return None
    return LeasedTask(
        task_id=step.task_id,
        namespace=namespace,
        flow_id=flow_id,
        step_id=step.step_id,
        attempt=step.attempt,
        queue=step.task_queue,
        params_json=canonical_bytes(dict(state.params_of(index))).decode(),
        inputs_json=canonical_bytes(inputs).decode(),
        lease_token=token,
    )


def _waiting_task(state: FlowState) -> int | None:
    if state.init is None or state.terminal or state.cancel_requested or state.failing:
        return None
    index = state.cursor
    if index >= len(state.steps) or state.init.steps[index].type != TASK:
        return None
    step = state.steps[index]
    if step.status is not StepStatus.RUNNING or step.task_id is None or step.timer_fired:
        return None
    return index


async def complete(
    engine: Engine, namespace: str, flow_id: str, task_id: str, token: int,
    outputs_json: tuple[str, ...],
) -> bool:  # fmt: skip
    """Record the task's outputs as the step's; True when it had been recorded already."""
    outputs = []
    for i, text in enumerate(outputs_json):
        try:
            value: JsonValue = parse_json(text)
            outputs.append(prepare(value))
        except ValueError as exc:
            raise InvalidArgument.field(f"outputs_json[{i}]", str(exc)) from exc
    _, duplicate = await _report(
        engine, namespace, flow_id, task_id, token, Outcome(outputs=tuple(outputs))
    )
    return duplicate


async def fail(
    engine: Engine, namespace: str, flow_id: str, task_id: str, token: int, reason: str,
    error_type: str,
) -> bool:  # fmt: skip
    """Record the task's failure; True when the step will be attempted again."""
    if not 1 <= len(error_type) <= 128:
        raise InvalidArgument.field("error_type", "must be 1..128 characters")
    if len(reason) > 4096:
        raise InvalidArgument.field("reason", "at most 4096 characters")
    outcome = Outcome(failure=StepFailure(reason, error_type))
    write, _ = await _report(engine, namespace, flow_id, task_id, token, outcome)
    return write is not None and any(isinstance(e, StepAttemptFailed) for e in write.events)


async def _report(
    engine: Engine, namespace: str, flow_id: str, task_id: str, token: int, outcome: Outcome
) -> tuple[Write | None, bool]:
    if token < 1:
        raise InvalidArgument.field("lease_token", "must be the token PollTask returned")
    # The append's fencing is the lease check: the store refuses a token that was taken over
    # or has expired (LEASE_LOST). The flow's token cannot be compared here beforehand: it is
    # not on the store's wire (a Flow read through the store service carries none).
    run = await engine.attach(flow_id, namespace=namespace, fencing_token=token)
    ended = False

    async def build(state: FlowState) -> Write | None:
        nonlocal ended
        index = _waiting_task(state)
        if index is None or state.steps[index].task_id != task_id:
            ended = True
            return None
        step = state.steps[index]
        write = run.planner.outcome_write(
            state, index, step.attempt, run.generation, True, outcome
        )
        # The token in the command id tells, later, which lease reported the attempt.
        return replace(write, command_id=f"{write.command_id}{_TOKEN_MARK}{token}")

    try:
        write, appended = await run.append_planned(build)
    except ResourceExhausted as full:
        if full.reason != EVENTS_PER_FLOW_EXCEEDED:
            raise
        # No room to record the outcome: the flow ends FAILED (as an engine ends it), which
        # releases the worker's lease, rather than waiting on the queue forever.
        await fail_out_of_room(run, full)
        raise
    if ended:
        reporter = await _reporter(run, task_id)
        if reporter == token:
            return None, True  # this very report, repeated
        if reporter is not None:
            raise LeaseLost(flow_id, token, "another worker's lease reported the task")
        # Timed out or cancelled meanwhile: the worker's hold on the flow ends here, so that an
        # engine runs it on (a cancel's compensations) without waiting for the lease to expire.
        await engine.store.release_lease(namespace, flow_id, token)
        raise FailedPrecondition(
            f"task {task_id} of flow {flow_id} is not pending (timed out, cancelled or "
            "already reported)",
            reason="TASK_NOT_PENDING",
            metadata={"flow_id": flow_id, "task_id": task_id},
        )
    if write is not None and appended is Appended.APPLIED:
        # The flow is RUNNING (or ended) again: the worker's hold on it ends here.
        await engine.store.release_lease(namespace, flow_id, token)
    return write, appended is Appended.DUPLICATE


def _ending(
    flow_id: str, generation: int, exc: FlowledgerError, error_type: str
) -> Callable[[FlowState], Awaitable[Write | None]]:
    async def build(state: FlowState) -> Write | None:
        if state.terminal:
            return None
        return permanent.ending_write(flow_id, state, generation, exc, error_type)

    return build


_TOKEN_MARK = ":t"
_ENDS_ATTEMPT = (StepFinished, StepFailed, StepAttemptFailed)


async def _reporter(run: FlowRun, task_id: str) -> int | None:
    """The lease token under which a worker reported the attempt ``task_id`` names, or None
    when no worker did (it is still pending, timed out, or the flow was cancelled)."""
    parts = task_id.rsplit(":", 3)
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    index, attempt = int(parts[2]), int(parts[3])
    for logged in await run.events():
        event = logged.event
        if isinstance(event, _ENDS_ATTEMPT) and (event.index, event.attempt) == (index, attempt):
            _, mark, token = logged.stored.command_id.rpartition(_TOKEN_MARK)
            return int(token) if mark and token.isdigit() else None
    return None


async def heartbeat(
    engine: Engine, namespace: str, flow_id: str, worker_id: str, token: int, lease_ms: int
) -> None:
    await engine.store.renew_lease(namespace, flow_id, worker_id, token, lease_ms)
