"""Undecodable request bodies on every StoreService RPC (decision 0023): INVALID_ARGUMENT saying
the request could not be decoded, no traceback logged, counted per method; an AppendStream that
receives one answers the commands it read before and then ends INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from flowledger import rpc_status
from flowledger.v1 import store_pb2
from flowledger_core.domain import Append, AppendResult
from store_service.adapters.memory import MemoryEventStore
from tests.fixtures.store_server import RunningStore, running_store
from tests.security.raw_calls import CORRUPT, bad_utf8, methods, raw_call, undecodable_count
from tests.store_service.helpers import command_id, create_flow, ev, ns

STORE = store_pb2.DESCRIPTOR.services_by_name["StoreService"]


@pytest.fixture
async def memory_service() -> AsyncIterator[RunningStore]:
    store = MemoryEventStore()
    async with running_store(store) as running:
        yield running
    await store.close()


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


async def test_every_rpc_answers_undecodable_bytes_invalid_argument(
    memory_service: RunningStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for method in methods(STORE):
        before = undecodable_count(method)
        for body in (CORRUPT, bad_utf8(method)):
            outcome = await raw_call(memory_service.channel, method, body)
            assert (outcome.code, outcome.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNDECODABLE_REQUEST",
            ), (method.name, outcome)
            assert "could not be decoded" in outcome.details
            assert method.input_type.full_name in outcome.details
        assert undecodable_count(method) == before + 2, method.name
    assert _problems(caplog) == []


class GatedStore(MemoryEventStore):
    """The memory store, whose appends wait for ``gate``: a command still running when the
    stream meets undecodable bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def append(self, cmd: Append) -> AppendResult:
        await self.gate.wait()
        return await super().append(cmd)


async def test_append_stream_answers_what_it_read_then_ends_on_undecodable_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = GatedStore()
    async with running_store(store) as running:
        space = ns()
        flow = await create_flow(running.stub, space)
        good = store_pb2.AppendStreamRequest(
            request_id=7,
            append=store_pb2.AppendEventsRequest(
                namespace=space,
                flow_id=flow.flow_id,
                expected_version=0,
                command_id=command_id(),
                events=[ev()],
            ),
        )
        method = STORE.methods_by_name["AppendStream"]
        before = undecodable_count(method)

        async def requests() -> AsyncIterator[bytes]:
            yield good.SerializeToString()
            yield CORRUPT
            # The command is still waiting for the gate when the stream reads the bytes.
            # A Prometheus counter has no event to wait on: poll it (the call's timeout bounds it).
            while undecodable_count(method) == before:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            store.gate.set()

        append_stream: grpc.aio.StreamStreamMultiCallable[
            bytes, store_pb2.AppendStreamResponse
        ] = running.channel.stream_stream(
            "/flowledger.v1.StoreService/AppendStream",
            response_deserializer=store_pb2.AppendStreamResponse.FromString,
        )
        call = append_stream(requests(), timeout=10.0)
        answers: list[store_pb2.AppendStreamResponse] = []

        async def read_all() -> None:
            async for answer in call:
                answers.append(answer)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_all()
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_status.from_rpc_error(ended.value).reason == "UNDECODABLE_REQUEST"
        assert [a.request_id for a in answers] == [7]
        assert answers[0].HasField("result")
        got = await running.stub.GetFlow(
            store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id)
        )
        assert got.flow.version == 1
    await store.close()
    assert _problems(caplog) == []
