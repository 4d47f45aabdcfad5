"""The one seam between flowledger errors and gRPC status.

Servers call :func:`to_status` (through :func:`abort`) for every error they return; clients call
:func:`from_rpc_error` on every ``grpc.RpcError`` (and :func:`from_status` on a status carried
inside a message, as AppendStream answers a failed command). The details are a
``google.rpc.ErrorInfo`` (stable ``reason`` and metadata) and, for invalid arguments, a
``google.rpc.BadRequest`` with one field violation per offending field — never a message string
to be parsed.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowledger.errors import (
    ERROR_CLASSES,
    ErrorCode,
    FieldViolation,
    FlowledgerError,
    VersionConflict,
)

ERROR_DOMAIN = "flowledger.dev"

_GRPC_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}
_ERROR_CODE: dict[grpc.StatusCode, ErrorCode] = {v: k for k, v in _GRPC_CODE.items()}


def grpc_code(error: FlowledgerError) -> grpc.StatusCode:
    return _GRPC_CODE[error.code]


def to_status(error: FlowledgerError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with ErrorInfo and BadRequest details) for ``error``."""
    code = grpc_code(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status.details.append(detail)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


async def abort(
    context: grpc.aio.ServicerContext[object, object], error: FlowledgerError
) -> NoReturn:
    """End the current RPC with ``error`` as a rich status."""
    await context.abort_with_status(rpc_status.to_status(to_status(error)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def from_rpc_error(exc: grpc.RpcError) -> FlowledgerError:
    """The flowledger error a failed call stands for (the inverse of :func:`to_status`)."""
    # grpc.aio raises AioRpcError, which has the Call accessors without being a grpc.Call.
    call: Any = exc if isinstance(exc, (grpc.Call, grpc.aio.AioRpcError)) else None
    if call is None:
        return _from_parts(grpc.StatusCode.UNKNOWN, str(exc), None)
    return _from_parts(call.code(), call.details(), rpc_status.from_call(call))


def from_status(status: status_pb2.Status) -> FlowledgerError:
    """The flowledger error a ``google.rpc.Status`` stands for (the inverse of
    :func:`to_status`): for statuses carried in a message, as AppendStream's ``error``."""
    code = _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_parts(code, status.message, status)


_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def _from_parts(
    call_code: grpc.StatusCode, details: str | None, status: status_pb2.Status | None
) -> FlowledgerError:
    error_code = _ERROR_CODE.get(call_code)
    if error_code is None:
        # UNKNOWN, CANCELLED, ...: no flowledger meaning; transport-level trouble is transient.
        error_code = (
            ErrorCode.UNAVAILABLE
            if call_code == grpc.StatusCode.CANCELLED
            else ErrorCode.INTERNAL
        )
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    if reason is None and call_code not in _ERROR_CODE:
        reason = call_code.name  # UNIMPLEMENTED (not an engine), UNKNOWN, ...: say which
    message = details or call_code.name
    if reason == VersionConflict.default_reason and "current_version" in metadata:
        return VersionConflict(
            metadata.get("flow_id", ""),
            int(metadata.get("expected_version", "0")),
            int(metadata["current_version"]),
        )
    return ERROR_CLASSES[error_code](
        message, reason=reason, metadata=metadata, violations=violations
    )


def is_transient(code: grpc.StatusCode) -> bool:
    """Codes a caller may retry with the same command id."""
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


__all__ = [
    "ERROR_DOMAIN", "abort", "from_rpc_error", "from_status", "grpc_code", "is_transient",
    "to_status",
]
_ = code_pb2  # google.rpc.code is the numbering the status codes follow
