"""Field checks shared by the request validators: a collector of violations.

:class:`FieldChecks` records every offending field of one request (as a path such as
``events[3].payload_json``) and :meth:`FieldChecks.done` raises them together: RESOURCE_EXHAUSTED
when a limit was passed, INVALID_ARGUMENT otherwise. JSON is checked for what Postgres jsonb and
RFC 8785 would refuse later (NUL, unpaired surrogates, non-finite numbers, excessive depth).
"""

from __future__ import annotations

import math
import re
from typing import Any

from flowledger.canonical import JsonTooDeep, parse_json
from flowledger.errors import FieldViolation, InvalidArgument, ResourceExhausted
from flowledger_core.id_prefix import is_id_prefix
from flowledger_core.limits import MAX_TASK_QUEUE_LENGTH, Limits
from flowledger_core.limits import TASK_QUEUE as _TASK_QUEUE
from flowledger_core.wire.store import (
    event_type_from_number,
    event_type_name,
    flow_status_from_number,
)

# Trailers carry the details (grpc-status-details-bin; peers accept 8 KiB of metadata by
# default), so a request with thousands of bad fields reports the first few.
MAX_REPORTED_VIOLATIONS = 20
_MAX_DESCRIPTION = 200

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ID = re.compile(r"[A-Za-z0-9._:-]+\Z")
_HASH = re.compile(r"[0-9a-f]{64}\Z")
_DEFINITION_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")
MAX_DEFINITION_NAME_LENGTH = 128  # definitions.name CHECK
# Timestamp's range (google/protobuf/timestamp.proto): 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


class FieldChecks:
    """Collects the violations of one request, then raises them all at once."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.invalid: list[FieldViolation] = []
        self.exhausted: list[FieldViolation] = []
        self.limit_metadata: dict[str, str] = {}

    # -- reporting ---------------------------------------------------------------------------

    def bad(self, field: str, description: str) -> None:
        self.invalid.append(FieldViolation(field, description[:_MAX_DESCRIPTION]))

    def too_big(self, field: str, description: str, limit: str, value: int) -> None:
        self.exhausted.append(FieldViolation(field, description))
        self.limit_metadata.setdefault("limit", limit)
        self.limit_metadata.setdefault("max", str(value))

    def done(self, rpc: str) -> None:
        violations = self.exhausted + self.invalid
        if not violations:
            return
        shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
        more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
        reported = violations[:MAX_REPORTED_VIOLATIONS]
        if self.exhausted:
            raise ResourceExhausted(
                f"{rpc} request exceeds a limit: {shown}{more}",
                metadata=self.limit_metadata,
                violations=reported,
            )
        raise InvalidArgument(f"invalid {rpc} request: {shown}{more}", violations=reported)

    # -- identifiers -------------------------------------------------------------------------

    def namespace(self, value: str, field: str = "namespace") -> None:
        self._identifier(field, value, "a namespace")

    def command_id(self, value: str, field: str = "command_id") -> None:
        self._identifier(field, value, "a command id")

    def _identifier(self, field: str, value: str, what: str) -> None:
        if not value:
            self.bad(field, f"is required ({what} of 1..{self.limits.max_id_length} characters)")
        elif len(value) > self.limits.max_id_length:
            self.bad(field, f"is {len(value)} characters long; at most "
                     f"{self.limits.max_id_length} are allowed")
        elif not _ID.match(value):
            self.bad(field, "may contain only letters, digits and . _ : -")

    def definition_name(self, value: str, field: str = "name") -> None:
        if not value:
            self.bad(field, f"is required (a definition name of 1..{MAX_DEFINITION_NAME_LENGTH} "
                     "characters)")
        elif len(value) > MAX_DEFINITION_NAME_LENGTH:
            self.bad(field, f"is {len(value)} characters long; at most "
                     f"{MAX_DEFINITION_NAME_LENGTH} are allowed")
        elif not _DEFINITION_NAME.match(value):
            self.bad(field, "may contain only letters, digits and . _ -")

    def task_queue(self, value: str, field: str) -> None:
        if not _TASK_QUEUE.match(value):
            self.bad(field, f"must be 1..{MAX_TASK_QUEUE_LENGTH} characters of letters, digits "
                     "and . _ : -")

    def uuid(self, value: str, field: str, *, optional: bool = False) -> None:
        if not value:
            if not optional:
                self.bad(field, "is required (a UUID)")
        elif not _UUID.match(value):
            self.bad(field, "must be a UUID in canonical lower-case form "
                     "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")

    def id_prefix(self, value: str, field: str) -> None:
        """Empty (no filter), or the start of a canonical UUID (flowledger_core.id_prefix)."""
        if value and not is_id_prefix(value):
            self.bad(field, "must be the first 1..36 characters of a flow id in canonical "
                     "lower-case form (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")

    def hash(self, value: str, field: str) -> bool:
        if not _HASH.match(value):
            self.bad(field, "must be a sha256 hash: 64 lower-case hex characters")
            return False
        return True

    # -- scalars -----------------------------------------------------------------------------

    def text(self, value: str, field: str, max_length: int, *, required: bool = False) -> None:
        if required and not value:
            self.bad(field, "is required")
        elif len(value) > max_length:
            self.bad(field, f"is {len(value)} characters long; at most {max_length} are allowed")
        elif "\x00" in value:
            self.bad(field, "must not contain the NUL character")

    def non_negative(self, value: int, field: str) -> None:
        if value < 0:
            self.bad(field, f"must be >= 0, got {value}")

    def in_range(self, value: int, field: str, low: int, high: int, zero_means: str) -> None:
        if value != 0 and not low <= value <= high:
            self.bad(field, f"must be {low}..{high} (0 means {zero_means}), got {value}")

    def within(self, value: int, field: str, low: int, high: int) -> None:
        """A required number in [low, high] (no zero default)."""
        if not low <= value <= high:
            self.bad(field, f"must be {low}..{high}, got {value}")

    def timestamp(self, seconds: int, nanos: int, field: str) -> None:
        """A google.protobuf.Timestamp in its documented range (years 1..9999)."""
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS or not 0 <= nanos < 1_000_000_000:
            self.bad(field, "must be a timestamp between 0001-01-01 and 9999-12-31 UTC")

    def event_type(self, value: int, field: str) -> None:
        if event_type_from_number(value) is None:
            self.bad(field, "must be a known event type, not EVENT_TYPE_UNSPECIFIED"
                     if value == 0 else f"{event_type_name(value)} is not a known event type")

    def flow_status(self, value: int, field: str, *, allow_unspecified: bool) -> None:
        if value == 0 and allow_unspecified:
            return
        if flow_status_from_number(value) is None:
            self.bad(field, "must be a known flow status, not FLOW_STATUS_UNSPECIFIED"
                     if value == 0 else f"{value} is not a known flow status")

    # -- JSON --------------------------------------------------------------------------------

    def json(
        self, text: str, field: str, *, require_object: bool, optional: bool = False
    ) -> tuple[bool, Any]:
        """Check JSON text; returns (ok, parsed value)."""
        if not text:
            if not optional:
                self.bad(field, "is required (JSON text)")
            return optional, None
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_payload_bytes:
            self.too_big(field, f"is {size} bytes; at most {self.limits.max_payload_bytes} are "
                         "allowed", "max_payload_bytes", self.limits.max_payload_bytes)
            return False, None
        try:
            value = parse_json(text)
        except JsonTooDeep:
            self.bad(field, f"is nested deeper than {self.limits.max_json_depth} levels")
            return False, None
        except ValueError as exc:
            self.bad(field, f"is not valid JSON: {exc}")
            return False, None
        if require_object and not isinstance(value, dict):
            self.bad(field, f"must be a JSON object, got a JSON {_json_kind(value)}")
            return False, None
        problem = _storable_problem(value, self.limits.max_json_depth)
        if problem is not None:
            self.bad(field, problem)
            return False, None
        return True, value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _storable_problem(value: object, max_depth: int) -> str | None:
    """Why Postgres jsonb or RFC 8785 would refuse a parsed JSON value (None when fine).

    Iterative, so that depth is limited by ``max_depth`` and not by the Python stack.
    """
    stack: list[tuple[object, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return f"is nested deeper than {max_depth} levels (at {path or '/'})"
            for key, child in item.items():
                key_problem = _string_problem(key)
                if key_problem:
                    return f"has a key that {key_problem} (at {path or '/'})"
                stack.append((child, depth + 1, f"{path}/{_pointer_escape(key)}"))
        elif isinstance(item, list):
            if depth > max_depth:
                return f"is nested deeper than {max_depth} levels (at {path or '/'})"
            stack.extend((child, depth + 1, f"{path}/{i}") for i, child in enumerate(item))
        elif isinstance(item, str):
            text_problem = _string_problem(item)
            if text_problem:
                return f"has a string that {text_problem} (at {path or '/'})"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"has a number outside the range of a double (at {path or '/'})"
    return None


def _string_problem(text: str) -> str | None:
    if text.isascii():
        if "\x00" in text:
            # jsonb refuses \u0000 ("unsupported Unicode escape sequence").
            return "contains \\u0000, which Postgres jsonb cannot store"
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (\\ud800-\\udfff escape)"
    return None


def _pointer_escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
