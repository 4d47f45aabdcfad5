"""Per-step failure handling: the retry policy, the per-attempt timeout and continue_on_error.

See docs/decisions/0010-retries-and-continue-on-error.md. A policy is part of a step's spec (and
so of FlowInitialized) only when the definition set one; engine-wide defaults
(:class:`StepDefaults` in ``EngineSettings``) apply to steps that have none and are not recorded:
the log records every attempt, so replay never needs the policy that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine_service.validation import compile_schema, violations
from flowledger.canonical import JsonValue
from flowledger.errors import FieldViolation

TIMEOUT_ERROR_TYPE = "Timeout"
STEP_TIMEOUT_ERROR_TYPE = "StepTimeout"  # the whole step's time ran out (never retried)
# Failures that another attempt would meet again, whatever a policy's non_retryable says: an
# address the egress policy refuses (engine_service.steps.egress).
NEVER_RETRIED = frozenset({"EgressDenied"})

RETRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "initial_interval_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
        "backoff_multiplier": {"type": "number", "minimum": 1, "maximum": 100},
        "max_interval_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
        "non_retryable": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 128},
        },
    },
}
TIMEOUT_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 86_400_000}
_RETRY_VALIDATOR = compile_schema(RETRY_SCHEMA, field="retry")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is attempted and how long the runner waits between attempts.
    The default (one attempt) retries nothing."""

    max_attempts: int = 1
    initial_interval_ms: int = 1000
    backoff_multiplier: float = 2.0
    max_interval_ms: int = 60_000
    non_retryable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "non_retryable", tuple(self.non_retryable))

    def violations(self, path: str) -> list[FieldViolation]:
        return violations(_RETRY_VALIDATOR, self.to_dict(), path)

    def retries(self, attempt: int, error_type: str) -> bool:
        """Whether a failed ``attempt`` (1-based) with ``error_type`` gets another attempt."""
        return (
            attempt < self.max_attempts
            and error_type not in self.non_retryable
            and error_type not in NEVER_RETRIED
        )

    def delay_ms(self, attempt: int) -> int:
        """The wait after failed ``attempt`` (1-based): initial * multiplier^(attempt-1),
        capped at max_interval_ms. Deterministic, so the recorded delay is reproducible."""
        delay = self.initial_interval_ms * self.backoff_multiplier ** (attempt - 1)
        return int(min(delay, self.max_interval_ms))

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "max_attempts": self.max_attempts,
            "initial_interval_ms": self.initial_interval_ms,
            "backoff_multiplier": self.backoff_multiplier,
            "max_interval_ms": self.max_interval_ms,
            "non_retryable": list(self.non_retryable),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryPolicy:
        """From a document (validated against RETRY_SCHEMA first); missing keys default."""
        base = cls()
        return cls(
            max_attempts=d.get("max_attempts", base.max_attempts),
            initial_interval_ms=d.get("initial_interval_ms", base.initial_interval_ms),
            backoff_multiplier=d.get("backoff_multiplier", base.backoff_multiplier),
            max_interval_ms=d.get("max_interval_ms", base.max_interval_ms),
            non_retryable=tuple(d.get("non_retryable", ())),
        )


@dataclass(frozen=True)
class StepDefaults:
    """What applies to a step whose spec sets no retry policy or timeout (engine-wide)."""

    retry: RetryPolicy = RetryPolicy()
    timeout_ms: int | None = None
