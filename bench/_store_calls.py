"""The store benchmark's side of the wire: its gRPC clients appending and reading, and the result
type every scenario reports (see :mod:`bench.store_bench`)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import grpc
import grpc.aio

from engine_service.store_client.append_stream import AppendStreams
from engine_service.store_client.retry import StoreClientSettings
from flowledger.v1 import common_pb2, store_pb2, store_pb2_grpc

NAMESPACE = "bench"
PAYLOAD = json.dumps({"step_id": "transform", "outputs": ["a" * 64], "n": 1})


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    latencies: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def create_store_flows(stub: store_pb2_grpc.StoreServiceAsyncStub, count: int) -> list[str]:
    ids = []
    for i in range(count):
        reply = await stub.CreateFlow(
            store_pb2.CreateFlowRequest(namespace=NAMESPACE, name=f"bench-{i}")
        )
        ids.append(reply.flow.flow_id)
    return ids


async def store_append(addr: str, clients: int, events_per_client: int) -> Result:
    """Each client appends single events to its own flow, one after the other."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        flows = await create_store_flows(stub, clients)
        lat: list[float] = []

        async def client(flow_id: str) -> None:
            for v in range(events_per_client):
                t0 = time.perf_counter()
                await stub.AppendEvents(
                    store_pb2.AppendEventsRequest(
                        namespace=NAMESPACE,
                        flow_id=flow_id,
                        expected_version=v,
                        command_id=f"c{v}",
                        events=[
                            common_pb2.NewEvent(
                                type=common_pb2.EVENT_TYPE_STEP_FINISHED, payload_json=PAYLOAD
                            )
                        ],
                    )
                )
                lat.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(client(f) for f in flows))
        elapsed = time.perf_counter() - start
    return Result(
        f"store gRPC append, {clients} client(s)", clients * events_per_client, elapsed, tuple(lat)
    )


async def store_append_stream(addr: str, clients: int, events_per_client: int) -> Result:
    """As :func:`store_append`, each client over its own AppendStream on the shared channel:
    send one command, await its answer, send the next."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        flows = await create_store_flows(stub, clients)
        lat: list[float] = []

        async def client(flow_id: str) -> None:
            call = stub.AppendStream()
            try:
                for v in range(events_per_client):
                    t0 = time.perf_counter()
                    request = store_pb2.AppendStreamRequest(request_id=v + 1)
                    cmd = request.append
                    cmd.namespace, cmd.flow_id = NAMESPACE, flow_id
                    cmd.expected_version, cmd.command_id = v, f"c{v}"
                    cmd.events.add(type=common_pb2.EVENT_TYPE_STEP_FINISHED, payload_json=PAYLOAD)
                    await call.write(request)
                    answer = await call.read()
                    assert isinstance(answer, store_pb2.AppendStreamResponse)
                    assert answer.HasField("result"), answer
                    lat.append(time.perf_counter() - t0)
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
            finally:
                call.cancel()

        start = time.perf_counter()
        await asyncio.gather(*(client(f) for f in flows))
        elapsed = time.perf_counter() - start
    return Result(
        f"store gRPC AppendStream, {clients} client(s)",
        clients * events_per_client,
        elapsed,
        tuple(lat),
    )


async def store_append_shared(addr: str, clients: int, events_per_client: int) -> Result:
    """As :func:`store_append_stream`, but the clients append through one shared client, the
    one an engine replica's flows share (``engine_service.store_client.append_stream``): one stream,
    and the requests waiting to be written at a time go in one message."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        flows = await create_store_flows(stub, clients)
        streams = AppendStreams(stub, StoreClientSettings())
        lat: list[float] = []

        async def client(flow_id: str) -> None:
            for v in range(events_per_client):
                t0 = time.perf_counter()
                request = store_pb2.AppendStreamRequest()
                cmd = request.append
                cmd.namespace, cmd.flow_id = NAMESPACE, flow_id
                cmd.expected_version, cmd.command_id = v, f"c{v}"
                cmd.events.add(type=common_pb2.EVENT_TYPE_STEP_FINISHED, payload_json=PAYLOAD)
                result = await streams.append(request)
                assert result is not None
                assert result.last_version == v + 1, result
                lat.append(time.perf_counter() - t0)

        try:
            start = time.perf_counter()
            await asyncio.gather(*(client(f) for f in flows))
            elapsed = time.perf_counter() - start
        finally:
            await streams.close()
    return Result(
        f"store gRPC shared client, {clients} client(s)",
        clients * events_per_client,
        elapsed,
        tuple(lat),
    )


async def fill_flow(addr: str, events: int, batch: int = 1000) -> str:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        (flow_id,) = await create_store_flows(stub, 1)
        for first in range(0, events, batch):
            n = min(batch, events - first)
            await stub.AppendEvents(
                store_pb2.AppendEventsRequest(
                    namespace=NAMESPACE,
                    flow_id=flow_id,
                    expected_version=first,
                    command_id=f"fill{first}",
                    events=[
                        common_pb2.NewEvent(
                            type=common_pb2.EVENT_TYPE_STEP_FINISHED, payload_json=PAYLOAD
                        )
                    ]
                    * n,
                )
            )
    return flow_id


async def store_read(addr: str, flow_id: str, expected: int) -> Result:
    async with grpc.aio.insecure_channel(
        addr, options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    ) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        start = time.perf_counter()
        count = 0
        async for chunk in stub.ReadEvents(
            store_pb2.ReadEventsRequest(namespace=NAMESPACE, flow_id=flow_id, chunk_size=5000)
        ):
            count += len(chunk.events)
        elapsed = time.perf_counter() - start
    assert count == expected, (count, expected)
    return Result(f"store gRPC ReadEvents {expected:,}", expected, elapsed)
