"""The snapshot form of a :class:`~engine_service.core.replay.FlowState`: canonical JSON tagged with
``STATE_SCHEMA`` (a snapshot of another schema is ignored and the log replayed)."""

from __future__ import annotations

from typing import Any

from engine_service.core.event_codec import decode, to_payload
from engine_service.core.events import FlowInitialized
from engine_service.core.replay import (
    STATE_SCHEMA,
    CompensationStatus,
    FlowState,
    PendingSignal,
    StepState,
    StepStatus,
)
from flowledger.canonical import canonical_bytes, parse_json
from flowledger.errors import InternalError
from flowledger_core.domain import EventType


def state_to_json(state: FlowState) -> str:
    """Canonical JSON of the state (what a snapshot stores)."""
    document: dict[str, Any] = {
        "schema": STATE_SCHEMA,
        "version": state.version,
        "init": None if state.init is None else to_payload(state.init),
        "steps": [
            {
                "step_id": s.step_id,
                "status": s.status.value,
                "attempt": s.attempt,
                "input_hashes": list(s.input_hashes),
                "output_hashes": list(s.output_hashes),
                "fingerprint": s.fingerprint,
                "reason": s.reason,
                "error_type": s.error_type,
                "waiting": s.waiting,
                "fire_at": s.fire_at,
                "timer_fired": s.timer_fired,
                "task_id": s.task_id,
                "task_queue": s.task_queue,
                "compensation": s.compensation.value,
                "compensation_attempt": s.compensation_attempt,
                "deadline": s.deadline,
            }
            for s in state.steps
        ],
        "cursor": state.cursor,
        "completed": state.completed,
        "failed": state.failed,
        "flow_fingerprint": state.flow_fingerprint,
        "overrides": {k: dict(v) for k, v in state.overrides.items()},
        "signals": [[g.name, g.payload_hash, g.request_id] for g in state.signals],
        "cancel_requested": state.cancel_requested,
        "cancel_reason": state.cancel_reason,
        "cancelled": state.cancelled,
    }
    return canonical_bytes(document).decode("utf-8")


def state_from_json(text: str) -> FlowState:
    """InternalError (reason BAD_SNAPSHOT) when the text is not a state of this schema."""
    try:
        d = parse_json(text)
        if d.get("schema") != STATE_SCHEMA:
            raise ValueError(f"schema is {d.get('schema')!r}, expected {STATE_SCHEMA!r}")
        init: FlowInitialized | None = None
        if d["init"] is not None:
            decoded = decode(EventType.FLOW_INITIALIZED, canonical_bytes(d["init"]).decode())
            assert isinstance(decoded, FlowInitialized)
            init = decoded
        steps = tuple(
            StepState(
                step_id=s["step_id"],
                status=StepStatus(s["status"]),
                attempt=int(s["attempt"]),
                input_hashes=tuple(s["input_hashes"]),
                output_hashes=tuple(s["output_hashes"]),
                fingerprint=s["fingerprint"],
                reason=s["reason"],
                error_type=s["error_type"],
                waiting=bool(s["waiting"]),
                fire_at=s["fire_at"],
                timer_fired=bool(s["timer_fired"]),
                task_id=s["task_id"],
                task_queue=s["task_queue"],
                compensation=CompensationStatus(s["compensation"]),
                compensation_attempt=int(s["compensation_attempt"]),
                deadline=s.get("deadline"),
            )
            for s in d["steps"]
        )
        return FlowState(
            version=int(d["version"]),
            init=init,
            steps=steps,
            cursor=int(d["cursor"]),
            completed=bool(d["completed"]),
            failed=bool(d["failed"]),
            flow_fingerprint=d["flow_fingerprint"],
            overrides={str(k): dict(v) for k, v in d["overrides"].items()},
            signals=tuple(PendingSignal(str(n), str(h), str(r)) for n, h, r in d["signals"]),
            cancel_requested=bool(d["cancel_requested"]),
            cancel_reason=str(d["cancel_reason"]),
            cancelled=bool(d["cancelled"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as exc:
        raise InternalError(
            f"unusable flow state snapshot: {exc}", reason="BAD_SNAPSHOT"
        ) from exc
