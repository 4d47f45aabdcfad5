"""Issue 14's history rules through the store's RPCs, on both backends: the order of an
append's checks (a conflict is ABORTED with the current version, whatever expected_version
claims), and an ended flow refusing events, over AppendEvents and AppendStream alike."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from flowledger.errors import FailedPrecondition, VersionConflict
from flowledger.v1 import common_pb2
from tests.fixtures.store_server import RunningStore
from tests.store_service.helpers import append, create_flow, ev, failure, ns
from tests.store_service.test_append_stream import Stream, command, error_of

HUGE = 2**63 - 1


async def test_an_absurd_expected_version_is_a_conflict(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(stub, space, flow.flow_id, 0, ev())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, flow.flow_id, HUGE, ev())
    assert caught.value.code() == grpc.StatusCode.ABORTED
    unary = failure(caught.value)
    assert isinstance(unary, VersionConflict)
    assert unary.metadata["current_version"] == "1"
    stream = Stream(store_service)
    try:
        streamed = error_of(await stream.run(command(space, flow.flow_id, HUGE, ev())))
    finally:
        stream.call.cancel()
    assert isinstance(streamed, VersionConflict)
    assert streamed.metadata == unary.metadata


async def test_an_ended_flow_refuses_events_on_both_calls(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(
        stub, space, flow.flow_id, 0, ev(common_pb2.EVENT_TYPE_FLOW_COMPLETED),
        new_status=common_pb2.FLOW_STATUS_COMPLETED,
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, flow.flow_id, 1, ev())
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    unary = failure(caught.value)
    assert isinstance(unary, FailedPrecondition)
    assert (unary.reason, unary.metadata["status"]) == ("FLOW_ENDED", "completed")
    stream = Stream(store_service)
    try:
        streamed = error_of(await stream.run(command(space, flow.flow_id, 1, ev())))
    finally:
        stream.call.cancel()
    assert (streamed.reason, streamed.metadata) == (unary.reason, unary.metadata)
    # A stale version on an ended flow is still a conflict first (re-read, then see the end).
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await append(stub, space, flow.flow_id, 0, ev())
    assert stale.value.code() == grpc.StatusCode.ABORTED
