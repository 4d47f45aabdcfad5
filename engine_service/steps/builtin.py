"""Step types the engine itself carries out: ``wait``, ``signal`` and ``task``.

They are not functions: the engine records that the step waits (TimerStarted / TaskScheduled),
sets the flow WAITING and lets go of it; a timer, a SignalFlow call or an external worker's
CompleteTask moves it on (docs/decisions/0013-durable-waits.md). Their names are reserved: a
registry cannot hide them, and a definition may use them at any position (first step
included), whatever kind it declares.

* ``wait`` {seconds (0 < s <= 3600), reason}: finishes after ``seconds``; its outputs are its
  inputs (it passes them through unchanged).
* ``signal`` {name, timeout_seconds, on_timeout (fail | default), default}: finishes when a
  signal of that name is (or was already) delivered; the payload is its one output. After the
  timeout it fails with ``SignalTimeout`` or outputs ``default``.
* ``task`` {queue, timeout_seconds}: handed to external workers on ``queue``
  (protos/flowledger/v1/worker.proto); their outputs are its outputs. After the timeout the
  attempt fails with ``Timeout`` (and is retried under the step's retry policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from engine_service.steps.context import StepContext, StepKind, StepResult
from engine_service.steps.registry import StepType
from flowledger.canonical import JsonValue
from flowledger.errors import InternalError

WAIT = "wait"
SIGNAL = "signal"
TASK = "task"
MAX_WAIT_SECONDS = 3600
SIGNAL_TIMEOUT_ERROR = "SignalTimeout"
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

_WAIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seconds"],
    "properties": {
        "seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT_SECONDS},
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


def _not_a_function(ctx: StepContext) -> StepResult:
    raise InternalError(f"step {ctx.step_id!r} is carried out by the engine, not called")


BUILTIN_TYPES: dict[str, StepType] = {
    WAIT: StepType(WAIT, StepKind.TRANSFORM, _not_a_function, _WAIT_SCHEMA,
                   "Wait durably (up to 3600 s); passes its inputs through"),
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
