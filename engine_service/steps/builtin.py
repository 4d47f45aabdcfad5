"""Step types the engine itself carries out: ``wait``, ``signal`` and ``task``.

They are not functions: the engine records that the step waits (TimerStarted / TaskScheduled),
sets the flow WAITING and lets go of it; a timer, a SignalFlow call or an external worker's
CompleteTask moves it on (docs/decisions/0013-durable-waits.md). Their names are reserved: a
registry cannot hide them, and a definition may use them at any position (first step
included), whatever kind it declares.

* ``wait`` {one of seconds (0 < s <= a year), until (an RFC 3339 time with its offset, at most a
  year ahead), duration (``30d``, ``1h30m``, ``2w``, ``90s``: weeks, days, hours, minutes,
  seconds, at most a year); reason}: finishes then (``until`` already past: at once); its
  outputs are its inputs (it passes them through unchanged). The time it fires is recorded in
  its TimerStarted, so replay never asks the clock again; a waiting flow holds no lease and no
  memory (it is a row with a wake time in the store).
* ``signal`` {name, timeout_seconds, on_timeout (fail | default), default}: finishes when a
  signal of that name is (or was already) delivered; the payload is its one output. After the
  timeout it fails with ``SignalTimeout`` or outputs ``default``.
* ``task`` {queue, timeout_seconds}: handed to external workers on ``queue``
  (protos/flowledger/v1/worker.proto); their outputs are its outputs. After the timeout the
  attempt fails with ``Timeout`` (and is retried under the step's retry policy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from engine_service.steps.context import StepContext, StepKind, StepResult
from engine_service.steps.registry import StepType
from flowledger.canonical import JsonValue
from flowledger.errors import FieldViolation, InternalError

WAIT = "wait"
SIGNAL = "signal"
TASK = "task"
MAX_WAIT_SECONDS = 366 * 24 * 3600  # a year, leap day included
DURATION = re.compile(
    r"^(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_UNIT_SECONDS = {"w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_WAIT_KEYS = ("seconds", "until", "duration")
SIGNAL_TIMEOUT_ERROR = "SignalTimeout"
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

_WAIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT_SECONDS},
        "until": {"type": "string", "minLength": 1, "maxLength": 64},
        "duration": {"type": "string", "minLength": 1, "maxLength": 64},
        "reason": {"type": "string", "maxLength": 1024},
    },
}
_SIGNAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000},
        "on_timeout": {"enum": ["fail", "default"]},
        "default": {},
    },
}
_TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["queue"],
    "properties": {
        "queue": {"type": "string", "pattern": NAME_PATTERN},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000},
    },
}


def duration_seconds(text: str) -> float | None:
    """Seconds of a duration like ``30d``, ``1h30m``, ``2w``, ``90s``, ``0.5s``; None if it is
    not one (no unit, an unknown unit, units out of order, nothing at all)."""
    match = DURATION.match(text)
    if match is None or not any(match.groupdict().values()):
        return None
    return sum(float(v) * _UNIT_SECONDS[k] for k, v in match.groupdict().items() if v)


def _check_wait(config: Mapping[str, JsonValue], path: str) -> list[FieldViolation]:
    given = [k for k in _WAIT_KEYS if k in config]
    if len(given) != 1:
        return [FieldViolation(path, "give exactly one of seconds, until or duration"
                               + (f" (got {', '.join(given)})" if given else ""))]
    key = given[0]
    value = config[key]
    if key == "duration":
        assert isinstance(value, str)  # the schema says so
        seconds = duration_seconds(value)
        if seconds is None:
            return [FieldViolation(f"{path}.duration", f"{value!r} is not a duration like 30d, "
                                   "1h30m, 2w or 90s (w d h m s, in that order)")]
        if not 0 < seconds <= MAX_WAIT_SECONDS:
            return [FieldViolation(f"{path}.duration", "must be more than 0 and at most a year")]
    if key == "until":
        assert isinstance(value, str)
        moment = _rfc3339(value)
        if moment is None:
            return [FieldViolation(f"{path}.until", f"{value!r} is not an RFC 3339 time with an "
                                   "offset, e.g. 2027-01-31T09:00:00Z")]
        if moment > datetime.now(UTC) + timedelta(seconds=MAX_WAIT_SECONDS):
            return [FieldViolation(f"{path}.until", "is more than a year ahead")]
    return []


def _rfc3339(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None and "T" in text.upper() else None


def wait_fires_at(params: Mapping[str, JsonValue], now: datetime) -> str:
    """When a ``wait`` step with ``params`` started at ``now`` fires (never before ``now``)."""
    if isinstance(until := params.get("until"), str):
        moment = _rfc3339(until)
        assert moment is not None  # the definition was checked
        return format_time(max(moment, now))
    if isinstance(text := params.get("duration"), str):
        seconds = duration_seconds(text)
        assert seconds is not None
    else:
        value = params.get("seconds")
        assert isinstance(value, int | float)
        seconds = float(value)
    return format_time(now + timedelta(seconds=seconds))


def _not_a_function(ctx: StepContext) -> StepResult:
    raise InternalError(f"step {ctx.step_id!r} is carried out by the engine, not called")


BUILTIN_TYPES: dict[str, StepType] = {
    WAIT: StepType(WAIT, StepKind.TRANSFORM, _not_a_function, _WAIT_SCHEMA,
                   "Wait durably (seconds, until a time, or a duration; up to a year); "
                   "passes its inputs through", config_check=_check_wait),
    SIGNAL: StepType(SIGNAL, StepKind.TRANSFORM, _not_a_function, _SIGNAL_SCHEMA,
                     "Wait for a named signal; its payload is the output"),
    TASK: StepType(TASK, StepKind.TRANSFORM, _not_a_function, _TASK_SCHEMA,
                   "Hand the step to external workers on a queue"),
}  # fmt: skip


def is_builtin(type_name: str) -> bool:
    return type_name in BUILTIN_TYPES


def deadline(params: Mapping[str, JsonValue], key: str, now: datetime) -> str | None:
    """``now`` + params[key] seconds as a timestamp string, or None when the key is absent."""
    seconds = params.get(key)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    return format_time(now + timedelta(seconds=float(seconds)))


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds: the form timers are recorded in."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def task_id(flow_id: str, generation: int, index: int, attempt: int) -> str:
    """Stable for one attempt of one step (a retried schedule names the same task)."""
    return f"{flow_id}:{generation}:{index}:{attempt}"
