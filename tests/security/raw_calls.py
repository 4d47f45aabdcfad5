"""Calls that send arbitrary bytes as a request (no serializer), for the undecodable-input tests:
every method of a service descriptor, unary or streaming, answered as (code, reason, details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from prometheus_client import REGISTRY

from flowledger import rpc_status

CALL_TIMEOUT_S = 10.0
CORRUPT = b"\xff\xff\xff\xff"
"""Not a protobuf encoding at all: field number 0 / a truncated varint."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def bad_utf8(method: MethodDescriptor) -> bytes:
    """A well-formed encoding of ``method``'s request whose first ``string`` field (at the top
    or in a message field) holds bytes that are not UTF-8 (proto3 refuses them when decoding)."""
    encoded = _bad_string(method.input_type, depth=3)
    assert encoded is not None, f"{method.full_name}: no string field"
    return encoded


def _bad_string(message: Descriptor, depth: int) -> bytes | None:
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _varint(field.number << 3 | 2) + b"\x02\xff\xfe"
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type and depth:
            inner = _bad_string(field.message_type, depth - 1)
            if inner is not None:
                return _varint(field.number << 3 | 2) + _varint(len(inner)) + inner
    return None


@dataclass(frozen=True)
class RawOutcome:
    code: grpc.StatusCode
    reason: str
    details: str


def full_method(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def raw_call(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    body: bytes,
    metadata: list[tuple[str, str]] | None = None,
) -> RawOutcome:
    """Send ``body`` as ``method``'s (first) request; the status the call ended with."""
    name = full_method(method)
    try:
        if method.client_streaming:

            async def requests() -> AsyncIterator[bytes]:
                yield body

            bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(name)
            async for _ in bidi(requests(), metadata=metadata, timeout=CALL_TIMEOUT_S):
                pass
        elif method.server_streaming:
            streamed: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(name)
            async for _ in streamed(body, metadata=metadata, timeout=CALL_TIMEOUT_S):
                pass
        else:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(name)
            await unary(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return RawOutcome(exc.code(), rpc_status.from_rpc_error(exc).reason, exc.details() or "")
    return RawOutcome(grpc.StatusCode.OK, "", "")


def methods(*services: ServiceDescriptor) -> list[MethodDescriptor]:
    return [method for service in services for method in service.methods]


def undecodable_count(method: MethodDescriptor) -> float:
    value = REGISTRY.get_sample_value(
        "flowledger_undecodable_requests_total",
        {"grpc_service": method.containing_service.full_name, "grpc_method": method.name},
    )
    return value or 0.0
