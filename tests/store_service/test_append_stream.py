"""StoreService.AppendStream over real gRPC on loopback, on both backends: the same results and
errors as AppendEvents, many flows multiplexed on one stream, and how a stream ends."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from flowledger import rpc_status
from flowledger.errors import (
    FailedPrecondition,
    FlowledgerError,
    InvalidArgument,
    NotFound,
    Unavailable,
    VersionConflict,
)
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core.ports import EventStore
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_server import RunningStore, running_store, wait_until
from tests.store_service.helpers import (
    append,
    art,
    command_id,
    create_flow,
    ev,
    failure,
    ns,
    read_all,
)

BOUND = 20.0

StreamCall = grpc.aio.StreamStreamCall[
    store_pb2.AppendStreamRequest, store_pb2.AppendStreamResponse
]


def command(
    namespace: str, flow_id: str, expected: int, *events: common_pb2.NewEvent, **kw: Any
) -> store_pb2.AppendEventsRequest:
    return store_pb2.AppendEventsRequest(
        namespace=namespace, flow_id=flow_id, expected_version=expected,
        command_id=kw.pop("command_id", None) or command_id(), events=list(events) or [ev()],
        **kw,
    )


class Stream:
    """One AppendStream call driven by a test: send commands, read answers."""

    def __init__(self, running: RunningStore) -> None:
        self.call: StreamCall = running.stub.AppendStream()
        self._ids = itertools.count(1)

    async def send(
        self, cmd: store_pb2.AppendEventsRequest, request_id: int | None = None
    ) -> int:
        rid = next(self._ids) if request_id is None else request_id
        await self.call.write(store_pb2.AppendStreamRequest(request_id=rid, append=cmd))
        return rid

    async def answer(self) -> store_pb2.AppendStreamResponse:
        response = await asyncio.wait_for(self.call.read(), BOUND)
        assert isinstance(response, store_pb2.AppendStreamResponse), "the stream ended"
        return response

    async def run(self, cmd: store_pb2.AppendEventsRequest) -> store_pb2.AppendStreamResponse:
        """Send one command and read its answer (nothing else is in flight)."""
        rid = await self.send(cmd)
        response = await self.answer()
        assert response.request_id == rid
        return response

    async def end(self) -> grpc.aio.AioRpcError | None:
        """Read to the end of the stream: the error it ended with, None when OK."""
        try:
            response = await asyncio.wait_for(self.call.read(), BOUND)
        except grpc.aio.AioRpcError as exc:
            return exc
        assert response is grpc.aio.EOF, f"an unexpected answer: {response}"
        return None

    async def failed(self, code: grpc.StatusCode) -> FlowledgerError:
        """Read to the end of the stream, which must end with ``code``; its error."""
        ended = await self.end()
        assert ended is not None, "the stream ended OK"
        assert ended.code() == code, ended
        return failure(ended)


def error_of(response: store_pb2.AppendStreamResponse) -> FlowledgerError:
    assert response.WhichOneof("outcome") == "error", response
    return rpc_status.from_status(status_pb2.Status.FromString(response.error))


def same_error(streamed: FlowledgerError, unary: FlowledgerError) -> None:
    assert type(streamed) is type(unary)
    assert (streamed.code, streamed.reason, streamed.message, streamed.metadata) == (
        unary.code, unary.reason, unary.message, unary.metadata
    )
    assert streamed.violations == unary.violations


async def test_results_equal_append_events(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    unary_flow, streamed_flow = await create_flow(stub, space), await create_flow(stub, space)
    stream = Stream(store_service)
    try:
        for expected, events, kw in (
            (0, (ev(n=1), ev(n=2)), {"artifacts": [art({"x": 1}, event_index=1)]}),
            (2, (ev(n=3),), {"new_status": common_pb2.FLOW_STATUS_RUNNING}),
        ):
            cid = command_id()
            by_call = await append(stub, space, unary_flow.flow_id, expected, *events,
                                   command_id=cid, **kw)
            answer = await stream.run(
                command(space, streamed_flow.flow_id, expected, *events, command_id=cid, **kw)
            )
            assert answer.WhichOneof("outcome") == "result"
            got = answer.result
            assert (got.first_version, got.last_version, got.duplicate) == (
                by_call.first_version, by_call.last_version, False
            )
            assert len(got.seqs) == len(by_call.seqs)
            # The same command again: the first result, marked duplicate, nothing written.
            again = await stream.run(
                command(space, streamed_flow.flow_id, expected, *events, command_id=cid, **kw)
            )
            assert again.result.duplicate
            assert list(again.result.seqs) == list(got.seqs)
            assert (again.result.first_version, again.result.last_version) == (
                got.first_version, got.last_version
            )
        await stream.call.done_writing()
        assert await stream.end() is None
    finally:
        stream.call.cancel()
    unary_log = await read_all(stub, space, unary_flow.flow_id)
    streamed_log = await read_all(stub, space, streamed_flow.flow_id)
    assert [(e.version, e.type, e.payload_json, e.command_id) for e in streamed_log] == [
        (e.version, e.type, e.payload_json, e.command_id) for e in unary_log
    ]
    got_flow = await stub.GetFlow(
        store_pb2.GetFlowRequest(namespace=space, flow_id=streamed_flow.flow_id)
    )
    assert got_flow.flow.status == common_pb2.FLOW_STATUS_RUNNING


async def test_command_errors_are_the_unary_calls_and_the_stream_goes_on(
    store_service: RunningStore,
) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(stub, space, flow.flow_id, 0, ev(n=1), ev(n=2))
    leased = await create_flow(stub, space)
    claimed = await stub.ClaimFlows(store_pb2.ClaimFlowsRequest(
        owner="replica-a", limit=10, lease_ms=60_000, namespaces=[space],
        flow_ids=[leased.flow_id],
    ))
    token = claimed.leases[0].fencing_token
    await stub.ReleaseLease(store_pb2.ReleaseLeaseRequest(
        namespace=space, flow_id=leased.flow_id, fencing_token=token,
    ))
    missing = "00000000-0000-4000-8000-000000000000"
    cases: list[tuple[store_pb2.AppendEventsRequest, type[FlowledgerError], str]] = [
        (command(space, flow.flow_id, 1, ev(n=3)), VersionConflict, "VERSION_CONFLICT"),
        (command(space, missing, 0, ev()), NotFound, ""),
        (command(space, leased.flow_id, 0, ev(), fencing_token=token), FailedPrecondition,
         "LEASE_LOST"),
    ]
    stream = Stream(store_service)
    try:
        for cmd, kind, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.AppendEvents(cmd)
            unary = failure(caught.value)
            streamed = error_of(await stream.run(cmd))
            assert isinstance(streamed, kind)
            assert not reason or streamed.reason == reason
            same_error(streamed, unary)
        conflict = error_of(await stream.run(cases[0][0]))
        assert isinstance(conflict, VersionConflict)
        assert conflict.metadata["current_version"] == "2"
        assert conflict.current_version == 2
        # Nothing was written, and the stream still serves.
        ok = await stream.run(command(space, flow.flow_id, 2, ev(n=3)))
        assert ok.result.last_version == 3
    finally:
        stream.call.cancel()
    assert [e.version for e in await read_all(stub, space, flow.flow_id)] == [1, 2, 3]
    assert await read_all(stub, space, leased.flow_id) == []


async def test_sixteen_flows_share_one_stream(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flows = [(await create_flow(stub, space)).flow_id for _ in range(16)]
    per_flow = 5
    stream = Stream(store_service)
    answers: dict[int, asyncio.Future[store_pb2.AppendStreamResponse]] = {}
    loop = asyncio.get_running_loop()
    sending = asyncio.Lock()  # one write at a time on a call

    async def dispatch() -> None:
        while True:
            response = await stream.call.read()
            if response is grpc.aio.EOF:
                return
            assert isinstance(response, store_pb2.AppendStreamResponse)
            answers.pop(response.request_id).set_result(response)

    async def flow_task(index: int, flow_id: str) -> list[tuple[int, int]]:
        got = []
        for version in range(per_flow):
            rid = 1000 * index + version
            answers[rid] = loop.create_future()
            async with sending:
                await stream.send(command(space, flow_id, version, ev(flow=index, n=version)),
                                  request_id=rid)
            response = await asyncio.wait_for(answers[rid], BOUND)
            assert response.request_id == rid
            got.append((response.result.first_version, response.result.last_version))
        return got

    received = _metric("grpc_server_msg_received_total")
    sent = _metric("grpc_server_msg_sent_total")
    reader = asyncio.create_task(dispatch())
    try:
        results = await asyncio.gather(*(flow_task(i, f) for i, f in enumerate(flows)))
        await stream.call.done_writing()
        await asyncio.wait_for(reader, BOUND)
        assert await asyncio.wait_for(stream.call.code(), BOUND) == grpc.StatusCode.OK
    finally:
        stream.call.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert answers == {}
    # Every command and every answer counted, as go-grpc-prometheus counts stream messages.
    assert _metric("grpc_server_msg_received_total") == received + 16 * per_flow
    assert _metric("grpc_server_msg_sent_total") == sent + 16 * per_flow
    for index, flow_id in enumerate(flows):
        assert results[index] == [(v, v) for v in range(1, per_flow + 1)]
        log = await read_all(stub, space, flow_id)
        assert [e.version for e in log] == list(range(1, per_flow + 1))
        assert [json.loads(e.payload_json) for e in log] == [
            {"flow": index, "n": n} for n in range(per_flow)
        ]


# -- how a stream ends (a GatedStore holds an answer back, so the moment is exact) --------------


@pytest.fixture
async def gated_service(
    store_backend: EventStore,
) -> AsyncIterator[tuple[RunningStore, GatedStore]]:
    gated = GatedStore(store_backend)
    async with running_store(gated) as running:
        yield running, gated
        gated.release_all()


async def test_a_reused_request_id_ends_the_stream_after_the_answers(
    gated_service: tuple[RunningStore, GatedStore], caplog: pytest.LogCaptureFixture
) -> None:
    running, gated = gated_service
    stub, space = running.stub, ns()
    flow = await create_flow(stub, space)
    held = gated.hold("append")
    stream = Stream(running)
    try:
        await stream.send(command(space, flow.flow_id, 0, ev(n=1)), request_id=7)
        await asyncio.wait_for(held.reached.wait(), BOUND)  # applied, its answer held
        with caplog.at_level(logging.WARNING, logger="store_service"):
            await stream.send(command(space, flow.flow_id, 1, ev(n=2)), request_id=7)
            await wait_until(
                lambda: any("request_id 7" in r.getMessage() for r in caplog.records),
                "the server to read the reused id", BOUND,
            )
        held.release.set()
        first = await stream.answer()
        assert (first.request_id, first.result.last_version) == (7, 1)
        error = await stream.failed(grpc.StatusCode.INVALID_ARGUMENT)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["request_id"]
    finally:
        stream.call.cancel()
    assert [e.version for e in await read_all(stub, space, flow.flow_id)] == [1]


async def test_a_draining_server_answers_what_it_received_then_ends_unavailable(
    gated_service: tuple[RunningStore, GatedStore],
) -> None:
    running, gated = gated_service
    stub, space = running.stub, ns()
    flow = await create_flow(stub, space)
    held = gated.hold("append")
    stream = Stream(running)
    try:
        rid = await stream.send(command(space, flow.flow_id, 0, ev(n=1)))
        await asyncio.wait_for(held.reached.wait(), BOUND)
        stopping = asyncio.create_task(running.server.stop(grace=BOUND))
        await wait_until(lambda: running.server.servicer.draining, "the drain", BOUND)
        held.release.set()
        answer = await stream.answer()
        assert (answer.request_id, answer.result.last_version) == (rid, 1)
        error = await stream.failed(grpc.StatusCode.UNAVAILABLE)
        assert isinstance(error, Unavailable)
        assert error.reason == "SHUTTING_DOWN"
        await asyncio.wait_for(stopping, BOUND)
    finally:
        stream.call.cancel()
    assert [e.version for e in await read_all_from(gated, space, flow.flow_id)] == [1]


async def test_a_stream_opened_while_draining_ends_unavailable(
    store_service: RunningStore,
) -> None:
    await store_service.server.begin_drain()
    stream = Stream(store_service)
    try:
        write_code = grpc.StatusCode.UNAVAILABLE
        try:
            await stream.send(command(ns(), "00000000-0000-4000-8000-000000000000", 0))
        except grpc.aio.AioRpcError as exc:
            # The store may end the stream before this write reaches it (a loaded machine): the
            # write then fails with the stream's status, which reading the end returns again.
            write_code = exc.code()
        assert write_code == grpc.StatusCode.UNAVAILABLE
        error = await stream.failed(grpc.StatusCode.UNAVAILABLE)
        assert error.reason == "SHUTTING_DOWN"
    finally:
        stream.call.cancel()


async def test_a_client_that_cancels_cancels_the_commands_in_flight(
    gated_service: tuple[RunningStore, GatedStore],
) -> None:
    running, gated = gated_service
    stub, space = running.stub, ns()
    flow = await create_flow(stub, space)
    held = gated.hold("append")
    cancelled_before = _handled("Canceled")
    stream = Stream(running)
    await stream.send(command(space, flow.flow_id, 0, ev(n=1)))
    await asyncio.wait_for(held.reached.wait(), BOUND)
    stream.call.cancel()
    # The handler ended (CANCELLED) although the held command was never released: its task was
    # cancelled, not waited for.
    await wait_until(lambda: _handled("Canceled") > cancelled_before, "the handler to end", BOUND)
    assert not held.release.is_set()


async def read_all_from(store: EventStore, namespace: str, flow_id: str) -> list[Any]:
    return [e for chunk in [c async for c in store.read_events(namespace, flow_id)] for e in chunk]


def _handled(code: str) -> float:
    return _metric("grpc_server_handled_total", grpc_code=code)


def _metric(name: str, **labels: str) -> float:
    """An AppendStream sample of the store's go-grpc-prometheus metrics (this process)."""
    labels = {
        "grpc_type": "bidi_stream", "grpc_service": "flowledger.v1.StoreService",
        "grpc_method": "AppendStream", **labels,
    }
    return REGISTRY.get_sample_value(name, labels) or 0.0
