"""Writes made on a flow's behalf by a caller: delivering a signal, asking for a cancel.

Both are appended without a lease (fencing token 0) at the version the caller read, so they
race fairly with whichever engine runs the flow: that engine's next append conflicts, it reads
the log again and sees the signal or the cancel (decision 0013). Both are idempotent: a signal
by its request id (its command id), a cancel by being recorded once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from engine_service.builtin_steps import NAME_PATTERN, SIGNAL
from engine_service.events import FlowCancelRequested, SignalReceived
from engine_service.executor import prepare
from engine_service.flow_run import Appended, FlowRun
from engine_service.replay import FlowState, StepStatus
from engine_service.writes import Write
from flowledger.canonical import JsonValue
from flowledger.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from store_service.domain import FlowStatus, NewArtifact

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
    TOO_MANY_PENDING_SIGNALS past ``max_pending`` unconsumed signals."""
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

    _, outcome = await run.append_planned(build)
    state = await run.state() if outcome is Appended.DUPLICATE else run.current_state
    assert state is not None
    duplicate = delivered or outcome is Appended.DUPLICATE
    return SignalResult(state.version, duplicate, resumed and not duplicate)


async def cancel(run: FlowRun, *, reason: str = "", requested_by: str = "") -> CancelResult:
    """Record FlowCancelRequested (the flow becomes RUNNING, so that an engine claims it and
    runs its compensations, then FlowCancelled). Idempotent; FailedPrecondition FLOW_ENDED for a
    completed or failed flow."""
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

    write, outcome = await run.append_planned(build)
    state = run.current_state
    assert state is not None
    return CancelResult(state.version, write is None or outcome is Appended.DUPLICATE)


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
