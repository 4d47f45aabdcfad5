"""Writes made on a flow's behalf by a caller: delivering a signal, asking for a cancel.

Both are appended without a lease (fencing token 0) at the version the caller read, so they
race fairly with whichever engine runs the flow: that engine's next append conflicts, it reads
the log again and sees the signal or the cancel (decision 0013). Both are idempotent: a signal
by its request id (its command id), a cancel by being recorded once.

A flow whose log has reached the store's events-per-flow limit (``STORE_MAX_EVENTS_PER_FLOW``)
takes no more events but its ending (see store_service/adapters/flow_limits.py), so it can
always end: a signal it has no room for is refused (RESOURCE_EXHAUSTED,
EVENTS_PER_FLOW_EXCEEDED) and the flow ends FAILED (``FlowFailed{EventsPerFlowExceeded}``, as an
engine ends it: it could not record what comes next either); a cancel it has no room for ends
it CANCELLED at once (FlowCancelled; no compensation can run, having no room to be recorded).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine_service.core.events import FlowCancelled, FlowCancelRequested, SignalReceived
from engine_service.core.replay import FlowState, StepStatus
from engine_service.core.writes import EVENTS_PER_FLOW_EXCEEDED, Write, out_of_room
from engine_service.run.flow_run import Appended, FlowRun
from engine_service.steps.builtin import NAME_PATTERN, SIGNAL
from engine_service.steps.executor import prepare
from flowledger.canonical import JsonValue
from flowledger.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from flowledger_core.domain import FlowStatus, NewArtifact

_NAME = re.compile(NAME_PATTERN)
MAX_TEXT = 1024


@dataclass(frozen=True)
class SignalResult:
    version: int
    duplicate: bool
    resumed: bool


@dataclass(frozen=True)
class CancelResult:
    version: int
    already: bool


def waits_for(state: FlowState, name: str) -> bool:
    """Whether the flow's current step is a ``signal`` step waiting for ``name``."""
    if state.init is None or state.terminal or state.cursor >= len(state.steps):
        return False
    step = state.steps[state.cursor]
    return (
        state.init.steps[state.cursor].type == SIGNAL
        and step.status is StepStatus.RUNNING
        and step.waiting
        and not step.timer_fired
        and state.params_of(state.cursor).get("name") == name
    )


async def signal(
    run: FlowRun,
    name: str,
    payload: JsonValue,
    *,
    request_id: str = "",
    sent_by: str = "",
    max_pending: int = 1000,
) -> SignalResult:
    """Record a signal (SignalReceived + its payload artifact); a step waiting for it resumes
    (status RUNNING). FailedPrecondition FLOW_ENDED for an ended flow; ResourceExhausted
    TOO_MANY_PENDING_SIGNALS past ``max_pending`` unconsumed signals, EVENTS_PER_FLOW_EXCEEDED
    when the flow's log is full (the flow then ends FAILED)."""
    if not _NAME.match(name):
        raise InvalidArgument.field("name", "must be 1..128 characters of [A-Za-z0-9._:-]")
    if (request_id and not _NAME.match(request_id)) or len(request_id) > 100:
        raise InvalidArgument.field("request_id", "must be 1..100 characters of [A-Za-z0-9._:-]")
    if len(sent_by) > MAX_TEXT:
        raise InvalidArgument.field("sent_by", f"at most {MAX_TEXT} characters")
    try:
        artifact = prepare(payload)
    except ValueError as exc:
        raise InvalidArgument.field("payload_json", str(exc)) from exc
    request_id = request_id or uuid.uuid4().hex
    command = f"signal:{request_id}"
    resumed = delivered = False

    async def build(state: FlowState) -> Write | None:
        nonlocal resumed, delivered
        if state.terminal:
            # A retry of a signal delivered before the flow ended is answered, not refused.
            delivered = await _delivered(run, request_id)
            if delivered:
                return None
            raise _ended(run.flow_id, state)
        if state.init is None:
            raise FailedPrecondition(
                f"flow {run.flow_id} is not initialized yet", reason="FLOW_NOT_INITIALIZED"
            )
        if len(state.signals) >= max_pending:
            raise ResourceExhausted(
                f"flow {run.flow_id} already holds {len(state.signals)} unconsumed signals",
                reason="TOO_MANY_PENDING_SIGNALS",
                metadata={"flow_id": run.flow_id, "limit": str(max_pending)},
            )
        resumed = waits_for(state, name)
        return Write(
            (SignalReceived(name, artifact.hash, request_id, sent_by),),
            command,
            (NewArtifact(artifact.hash, "signal_payload", artifact.payload_json),),
            FlowStatus.RUNNING if resumed else None,
        )

    try:
        _, outcome = await run.append_planned(build)
    except ResourceExhausted as full:
        if full.reason != EVENTS_PER_FLOW_EXCEEDED:
            raise
        await fail_out_of_room(run, full)
        raise ResourceExhausted(
            f"signal {name!r} was not delivered: {full.message}. The flow has no room for "
            "more events and ends failed (EventsPerFlowExceeded)",
            reason=full.reason,
            metadata=full.metadata,
        ) from full
    state = await run.state() if outcome is Appended.DUPLICATE else run.current_state
    assert state is not None
    duplicate = delivered or outcome is Appended.DUPLICATE
    return SignalResult(state.version, duplicate, resumed and not duplicate)


async def cancel(run: FlowRun, *, reason: str = "", requested_by: str = "") -> CancelResult:
    """Record FlowCancelRequested (the flow becomes RUNNING, so that an engine claims it and
    runs its compensations, then FlowCancelled). Idempotent; FailedPrecondition FLOW_ENDED for a
    completed or failed flow. A flow whose log is full ends CANCELLED at once."""
    if len(reason) > MAX_TEXT or len(requested_by) > MAX_TEXT:
        raise InvalidArgument.field("reason", f"reason and cancelled_by: at most {MAX_TEXT} chars")

    async def build(state: FlowState) -> Write | None:
        if state.cancelled or state.cancel_requested:
            return None
        if state.terminal:
            raise _ended(run.flow_id, state)
        if state.init is None:
            raise FailedPrecondition(
                f"flow {run.flow_id} is not initialized yet", reason="FLOW_NOT_INITIALIZED"
            )
        return Write(
            (FlowCancelRequested(reason, requested_by),),
            f"{run.flow_id}:cancel",
            new_status=FlowStatus.RUNNING,
        )

    try:
        write, outcome = await run.append_planned(build)
    except ResourceExhausted as full:
        if full.reason != EVENTS_PER_FLOW_EXCEEDED:
            raise
        write, outcome = await run.append_planned(_cancelled_for_room(run, reason, full))
    state = run.current_state
    assert state is not None
    return CancelResult(state.version, write is None or outcome is Appended.DUPLICATE)


async def terminate(run: FlowRun, *, reason: str = "", terminated_by: str = "") -> CancelResult:
    """End the flow CANCELLED now: FlowCancelled with ``terminated_by``, no compensation, no
    further step (a step running elsewhere has its result refused: the flow has ended).
    Idempotent (a cancelled flow answers ``already``); FailedPrecondition FLOW_ENDED for a
    completed or failed flow. The one append the store takes past a full log, like a cancel's."""
    if len(reason) > MAX_TEXT or len(terminated_by) > MAX_TEXT:
        raise InvalidArgument.field(
            "reason", f"reason and terminated_by: at most {MAX_TEXT} chars"
        )

    async def build(state: FlowState) -> Write | None:
        if state.cancelled:
            return None
        if state.terminal:
            raise _ended(run.flow_id, state)
        return Write(
            (FlowCancelled(reason, terminated_by),),
            f"{run.flow_id}:terminate",
            new_status=FlowStatus.CANCELLED,
        )

    write, outcome = await run.append_planned(build)
    state = run.current_state
    assert state is not None
    return CancelResult(state.version, write is None or outcome is Appended.DUPLICATE)


def _cancelled_for_room(
    run: FlowRun, reason: str, full: ResourceExhausted
) -> Callable[[FlowState], Awaitable[Write | None]]:
    """The cancel of a flow with no room for FlowCancelRequested: its ending, FlowCancelled
    (the one append the store takes past the limit)."""

    async def build(state: FlowState) -> Write | None:
        if state.cancelled:
            return None
        if state.terminal:
            raise _ended(run.flow_id, state)
        why = f"{reason}; " if reason else ""
        return Write(
            (FlowCancelled(f"{why}no compensation ran: {full.message}"[:MAX_TEXT]),),
            f"{run.flow_id}:cancel",
            new_status=FlowStatus.CANCELLED,
        )

    return build


async def fail_out_of_room(run: FlowRun, full: ResourceExhausted) -> None:
    """End ``run``'s flow FAILED with ``FlowFailed{EventsPerFlowExceeded}`` after a write made
    on its behalf (a signal, a task's outcome) was refused for the events-per-flow limit; the
    engine's own ending (flow_run), so a race with it is a duplicate. Nothing if it ended."""

    async def build(state: FlowState) -> Write | None:
        if state.terminal or state.init is None:
            return None
        return out_of_room(run.flow_id, state, run.generation, full)

    await run.append_planned(build)


async def _delivered(run: FlowRun, request_id: str) -> bool:
    return any(
        isinstance(e.event, SignalReceived) and e.event.request_id == request_id
        for e in await run.events()
    )


def _ended(flow_id: str, state: FlowState) -> FailedPrecondition:
    status = "completed" if state.completed else "cancelled" if state.cancelled else "failed"
    return FailedPrecondition(
        f"flow {flow_id} has ended ({status})",
        reason="FLOW_ENDED",
        metadata={"flow_id": flow_id, "status": status},
    )
