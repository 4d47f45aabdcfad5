"""Request builders and readers for the gRPC store tests."""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from flowledger import rpc_status
from flowledger.canonical import canonical_bytes, content_hash
from flowledger.errors import FlowledgerError
from flowledger.v1 import common_pb2, store_pb2

if TYPE_CHECKING:
    from flowledger.v1.store_pb2_grpc import StoreServiceAsyncStub

_commands = itertools.count(1)

STARTED = common_pb2.EVENT_TYPE_STEP_STARTED
FINISHED = common_pb2.EVENT_TYPE_STEP_FINISHED
FAILED = common_pb2.EVENT_TYPE_STEP_FAILED


def ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def command_id() -> str:
    return f"cmd-{next(_commands)}-{uuid.uuid4().hex[:8]}"


def ev(type_: common_pb2.EventType.ValueType = STARTED, **payload: Any) -> common_pb2.NewEvent:
    text = canonical_bytes(payload or {"n": 0}).decode()
    return common_pb2.NewEvent(type=type_, payload_json=text)


def art(value: Any, event_index: int = 0, kind: str = "json") -> common_pb2.NewArtifact:
    return common_pb2.NewArtifact(
        hash=content_hash(value), kind=kind, payload_json=canonical_bytes(value).decode(),
        event_index=event_index,
    )


async def create_flow(stub: StoreServiceAsyncStub, namespace: str, **kw: Any) -> common_pb2.Flow:
    response = await stub.CreateFlow(
        store_pb2.CreateFlowRequest(namespace=namespace, name=kw.pop("name", "f"), **kw)
    )
    return response.flow


async def append(
    stub: StoreServiceAsyncStub,
    namespace: str,
    flow_id: str,
    expected: int,
    *events: common_pb2.NewEvent,
    **kw: Any,
) -> store_pb2.AppendEventsResponse:
    return await stub.AppendEvents(
        store_pb2.AppendEventsRequest(
            namespace=namespace, flow_id=flow_id, expected_version=expected,
            command_id=kw.pop("command_id", None) or command_id(),
            events=list(events) or [ev()], **kw,
        )
    )


async def read_all(
    stub: StoreServiceAsyncStub, namespace: str, flow_id: str, **kw: Any
) -> list[common_pb2.Event]:
    out: list[common_pb2.Event] = []
    async for response in stub.ReadEvents(
        store_pb2.ReadEventsRequest(namespace=namespace, flow_id=flow_id, **kw)
    ):
        out.extend(response.events)
    return out


async def next_feed(
    call: grpc.aio.UnaryStreamCall[store_pb2.SubscribeRequest, store_pb2.SubscribeResponse],
) -> list[store_pb2.FeedEvent]:
    """The events of the next message of a Subscribe stream (fails at the end of the stream)."""
    response = await call.read()
    assert isinstance(response, store_pb2.SubscribeResponse), "the stream ended"
    return list(response.events)


def failure(exc: grpc.RpcError) -> FlowledgerError:
    """The flowledger error a failed call carries (decoded from its rich status)."""
    return rpc_status.from_rpc_error(exc)


def field_paths(exc: grpc.RpcError) -> set[str]:
    return {v.field for v in failure(exc).violations}
