"""The one error vocabulary of flowledger.

Every layer raises these: the Postgres adapter translates database errors into them, the gRPC
layer turns them into a ``google.rpc.Status`` (see :mod:`flowledger.rpc_status`), and clients turn
that status back into the same classes. Each class carries a stable ``reason`` (sent as
``google.rpc.ErrorInfo.reason``) that programs may match on; messages are for people.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class ErrorCode(enum.Enum):
    """Stable error categories; each maps to exactly one gRPC status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field, as a path (``events[3].payload_json``) and what is wrong."""

    field: str
    description: str


class FlowledgerError(Exception):
    """Base of every flowledger error. ``reason`` is stable; ``metadata`` values are strings."""

    code: ErrorCode = ErrorCode.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(FlowledgerError):
    code = ErrorCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """A one-field violation whose message names the field."""
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])


class NotFound(FlowledgerError):
    code = ErrorCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(FlowledgerError):
    code = ErrorCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(FlowledgerError):
    code = ErrorCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(FlowledgerError):
    """A conflict the caller resolves by re-reading (or a transient conflict past the budget)."""

    code = ErrorCode.ABORTED
    default_reason = "ABORTED"


class VersionConflict(Aborted):
    """``expected_version`` was stale. ``current_version`` tells the caller where the flow is."""

    default_reason = "VERSION_CONFLICT"

    def __init__(self, flow_id: str, expected_version: int, current_version: int) -> None:
        super().__init__(
            f"flow {flow_id} is at version {current_version}, not {expected_version}: "
            "re-read the flow and decide again",
            metadata={
                "flow_id": flow_id,
                "expected_version": str(expected_version),
                "current_version": str(current_version),
            },
        )
        self.flow_id = flow_id
        self.expected_version = expected_version
        self.current_version = current_version


class ResourceExhausted(FlowledgerError):
    code = ErrorCode.RESOURCE_EXHAUSTED
    default_reason = "LIMIT_EXCEEDED"


class Unavailable(FlowledgerError):
    """Transient: the call may be retried (the same command id makes that safe)."""

    code = ErrorCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(FlowledgerError):
    code = ErrorCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(FlowledgerError):
    code = ErrorCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(FlowledgerError):
    code = ErrorCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class InternalError(FlowledgerError):
    code = ErrorCode.INTERNAL
    default_reason = "INTERNAL"


ERROR_CLASSES: dict[ErrorCode, type[FlowledgerError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.FAILED_PRECONDITION: FailedPrecondition,
    ErrorCode.ABORTED: Aborted,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.INTERNAL: InternalError,
}
