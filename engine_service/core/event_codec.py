"""The JSON form of the engine's events in ``event_log.payload`` (see
:mod:`engine_service.core.events`).

Each payload carries its full kind (``{"kind": "StepFinished", ...}``) and is written as RFC 8785
canonical JSON; a malformed payload of a modelled event is InternalError (CORRUPT_EVENT).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine_service.core.events import (
    EVENT_TYPES,
    CompensationFailed,
    CompensationFinished,
    CompensationStarted,
    EngineEvent,
    FlowCancelled,
    FlowCancelRequested,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    OpaqueEvent,
    PropertyPreferenceAssigned,
    SignalReceived,
    StepAttemptFailed,
    StepFailed,
    StepFinished,
    StepSignal,
    StepSkipped,
    StepStarted,
    TaskScheduled,
    TimerFired,
    TimerStarted,
    event_type,
)
from engine_service.definitions.definition import steps_from_dicts
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import InternalError
from flowledger_core.domain import EventType, NewEvent

_CLASSES: dict[EventType, type[Any]] = {value: key for key, value in EVENT_TYPES.items()}

def to_payload(event: EngineEvent) -> dict[str, JsonValue]:
    if isinstance(event, OpaqueEvent):
        raise InternalError("opaque events are never written by the engine")
    body: dict[str, JsonValue]
    match event:
        case FlowInitialized():
            body = {
                "definition_name": event.definition_name,
                "definition_version": event.definition_version,
                "definition_hash": event.definition_hash,
                "steps": [s.to_dict() for s in event.steps],
                "input_hash": event.input_hash,
                "variables_hash": event.variables_hash,
                "engine_version": event.engine_version,
            }
        case StepFinished():
            body = {
                "step_id": event.step_id,
                "index": event.index,
                "attempt": event.attempt,
                "input_hashes": list(event.input_hashes),
                "output_hashes": list(event.output_hashes),
                "fingerprint": event.fingerprint,
            }
        case StepStarted():
            body = {k: v for k, v in vars(event).items() if k != "deadline"}
            if event.deadline is not None:
                body["deadline"] = event.deadline
        case StepFailed():
            body = {k: v for k, v in vars(event).items() if k != "fingerprint"}
            if event.fingerprint is not None:
                body["fingerprint"] = event.fingerprint
        case PropertyPreferenceAssigned():
            body = {"params": {k: dict(v) for k, v in event.params.items()}}
        case CompensationFinished():
            body = {**vars(event), "output_hashes": list(event.output_hashes)}
        case FlowCancelled():
            body = {"reason": event.reason}  # a cancel's payload is what it always was
            if event.terminated_by is not None:
                body["terminated_by"] = event.terminated_by
        case _:
            body = dict(vars(event))
    return {"kind": type(event).__name__, **body}


def encode(event: EngineEvent) -> NewEvent:
    """The store's NewEvent: event type and canonical payload text."""
    payload = canonical_bytes(to_payload(event)).decode("utf-8")
    return NewEvent(type=event_type(event), payload_json=payload)


def decode(etype: EventType, payload_json: str) -> EngineEvent:
    """The typed event of a stored one. InternalError when a modelled event is malformed: the
    log is the source of truth and a corrupt entry must stop the flow, not be guessed at."""
    payload = parse_json(payload_json)
    cls = _CLASSES.get(etype)
    if cls is None:
        return OpaqueEvent(etype, payload)
    try:
        if not isinstance(payload, dict) or payload.get("kind") != cls.__name__:
            raise ValueError(
                f"kind is {payload.get('kind') if isinstance(payload, dict) else None!r}"
            )
        return _from_payload(cls, payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise InternalError(
            f"malformed {etype.value} event payload: {exc}",
            reason="CORRUPT_EVENT",
            metadata={"event_type": etype.value},
        ) from exc


def _from_payload(cls: type[Any], p: Mapping[str, Any]) -> EngineEvent:
    if cls is FlowInitialized:
        return FlowInitialized(
            definition_name=_str(p["definition_name"]),
            definition_version=_int(p["definition_version"]),
            definition_hash=_str(p["definition_hash"]),
            steps=steps_from_dicts(p["steps"]),
            input_hash=_str(p["input_hash"]),
            variables_hash=None if p["variables_hash"] is None else _str(p["variables_hash"]),
            engine_version=_str(p["engine_version"]),
        )
    if cls is StepStarted:
        deadline = p.get("deadline")
        return StepStarted(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            None if deadline is None else _str(deadline),
        )
    if cls is StepFinished:
        return StepFinished(
            step_id=_str(p["step_id"]),
            index=_int(p["index"]),
            attempt=_int(p["attempt"]),
            input_hashes=tuple(_str(h) for h in p["input_hashes"]),
            output_hashes=tuple(_str(h) for h in p["output_hashes"]),
            fingerprint=_str(p["fingerprint"]),
        )
    if cls is StepFailed:
        return StepFailed(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            _str(p["reason"]),
            _str(p["error_type"]),
            None if p.get("fingerprint") is None else _str(p["fingerprint"]),
        )
    if cls is StepAttemptFailed:
        return StepAttemptFailed(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            _str(p["reason"]),
            _str(p["error_type"]),
            _int(p["delay_ms"]),
        )
    if cls is StepSkipped:
        return StepSkipped(_str(p["step_id"]), _int(p["index"]), _str(p["fingerprint"]))
    if cls is StepSignal:
        return StepSignal(_str(p["step_id"]), _int(p["index"]), _str(p["name"]), p["payload"])
    if cls is PropertyPreferenceAssigned:
        params = p["params"]
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in params.items()
        ):
            raise TypeError("params must map step ids to JSON objects")
        return PropertyPreferenceAssigned(params)
    if cls is FlowCompleted:
        return FlowCompleted(_str(p["flow_fingerprint"]))
    if cls is FlowFailed:
        return FlowFailed(
            _str(p["step_id"]), _int(p["index"]), _str(p["reason"]), _str(p["error_type"])
        )
    if cls is TimerStarted:
        return TimerStarted(
            _str(p["step_id"]), _int(p["index"]), _int(p["attempt"]), _opt_str(p["fire_at"])
        )
    if cls is TimerFired:
        return TimerFired(_str(p["step_id"]), _int(p["index"]), _int(p["attempt"]))
    if cls is SignalReceived:
        return SignalReceived(
            _str(p["name"]), _str(p["payload_hash"]), _str(p["request_id"]), _str(p["sent_by"])
        )
    if cls is TaskScheduled:
        return TaskScheduled(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            _str(p["queue"]),
            _str(p["task_id"]),
            _opt_str(p["fire_at"]),
        )
    if cls is CompensationStarted:
        return CompensationStarted(_str(p["step_id"]), _int(p["index"]), _int(p["attempt"]))
    if cls is CompensationFinished:
        return CompensationFinished(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            tuple(_str(h) for h in p["output_hashes"]),
        )
    if cls is CompensationFailed:
        delay = p["delay_ms"]
        return CompensationFailed(
            _str(p["step_id"]),
            _int(p["index"]),
            _int(p["attempt"]),
            _str(p["reason"]),
            _str(p["error_type"]),
            None if delay is None else _int(delay),
        )
    if cls is FlowCancelRequested:
        return FlowCancelRequested(_str(p["reason"]), _str(p["requested_by"]))
    if cls is FlowCancelled:
        by = p.get("terminated_by")
        return FlowCancelled(_str(p["reason"]), None if by is None else _str(by))
    raise TypeError(f"no decoder for {cls.__name__}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
