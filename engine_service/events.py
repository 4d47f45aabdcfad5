"""The engine's events: typed payloads and their JSON form in ``event_log.payload``.

Each payload carries its full kind (``{"kind": "StepFinished", ...}``) and is written as RFC 8785
canonical JSON, so that the same run gives the same payload text on any backend (Postgres
re-formats jsonb on reading; compare parsed payloads, which are equal). Event types the engine
does not model decode to :class:`OpaqueEvent`, which replay ignores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from engine_service.definition import StepSpec, steps_from_dicts
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import InternalError
from store_service.domain import EventType, NewEvent


@dataclass(frozen=True)
class FlowInitialized:
    definition_name: str
    definition_version: int
    definition_hash: str
    steps: tuple[StepSpec, ...]  # ids, types, kinds and params, in order
    input_hash: str
    variables_hash: str | None
    engine_version: str

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps)


@dataclass(frozen=True)
class StepStarted:
    step_id: str
    index: int
    attempt: int


@dataclass(frozen=True)
class StepFinished:
    step_id: str
    index: int
    attempt: int
    input_hashes: tuple[str, ...]  # as the step received them (the fingerprint sorts them)
    output_hashes: tuple[str, ...]  # in the order the step produced them
    fingerprint: str


@dataclass(frozen=True)
class StepFailed:
    step_id: str
    index: int
    attempt: int
    reason: str
    error_type: str
    # Only for a continue_on_error step (the flow goes on): the fingerprint of its failure,
    # decision 0010. Absent from the payload otherwise.
    fingerprint: str | None = None


@dataclass(frozen=True)
class StepAttemptFailed:
    """An attempt failed and the step will be attempted again after ``delay_ms``."""

    step_id: str
    index: int
    attempt: int
    reason: str
    error_type: str
    delay_ms: int


@dataclass(frozen=True)
class StepSkipped:
    """The step's ``when`` condition was false: it did not run (decision 0010)."""

    step_id: str
    index: int
    fingerprint: str


@dataclass(frozen=True)
class StepSignal:
    step_id: str
    index: int
    name: str
    payload: JsonValue


@dataclass(frozen=True)
class PropertyPreferenceAssigned:
    """Params that replace, from now on, those FlowInitialized recorded for some steps (by step
    id; each a whole params object). A branch appends one first: see
    docs/decisions/0007-branch-params.md. Only steps that have not started may be named."""

    params: Mapping[str, Mapping[str, JsonValue]]


@dataclass(frozen=True)
class FlowCompleted:
    flow_fingerprint: str


@dataclass(frozen=True)
class FlowFailed:
    step_id: str
    index: int
    reason: str
    error_type: str


@dataclass(frozen=True)
class OpaqueEvent:
    """An event of a type this engine does not model (kept, never interpreted)."""

    type: EventType
    payload: JsonValue


EngineEvent: TypeAlias = (
    FlowInitialized
    | StepStarted
    | StepFinished
    | StepFailed
    | StepAttemptFailed
    | StepSkipped
    | StepSignal
    | PropertyPreferenceAssigned
    | FlowCompleted
    | FlowFailed
    | OpaqueEvent
)

EVENT_TYPES: dict[type[Any], EventType] = {
    FlowInitialized: EventType.FLOW_INITIALIZED,
    StepStarted: EventType.STEP_STARTED,
    StepFinished: EventType.STEP_FINISHED,
    StepFailed: EventType.STEP_FAILED,
    StepAttemptFailed: EventType.STEP_ATTEMPT_FAILED,
    StepSkipped: EventType.STEP_SKIPPED,
    StepSignal: EventType.STEP_SIGNAL,
    PropertyPreferenceAssigned: EventType.PROPERTY_PREFERENCE_ASSIGNED,
    FlowCompleted: EventType.FLOW_COMPLETED,
    FlowFailed: EventType.FLOW_FAILED,
}
_CLASSES: dict[EventType, type[Any]] = {value: key for key, value in EVENT_TYPES.items()}


def event_type(event: EngineEvent) -> EventType:
    if isinstance(event, OpaqueEvent):
        return event.type
    return EVENT_TYPES[type(event)]


def variant(event: EngineEvent) -> str:
    """The compact one-letter variant (I, S, F, X, G, C, ...)."""
    return event_type(event).variant


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
        case StepFailed():
            body = {k: v for k, v in vars(event).items() if k != "fingerprint"}
            if event.fingerprint is not None:
                body["fingerprint"] = event.fingerprint
        case PropertyPreferenceAssigned():
            body = {"params": {k: dict(v) for k, v in event.params.items()}}
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
        return StepStarted(_str(p["step_id"]), _int(p["index"]), _int(p["attempt"]))
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
    raise TypeError(f"no decoder for {cls.__name__}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
