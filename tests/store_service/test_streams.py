"""Streaming RPCs: chunking by count and bytes, order, cancellation, and drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from flowledger.v1 import common_pb2, store_pb2
from store_service.adapters.memory import MemoryEventStore
from store_service.settings import Limits
from tests.fixtures.store_server import RunningStore, running_store, store_settings, wait_until
from tests.store_service.helpers import append, create_flow, ev, failure, ns

N_EVENTS = 25_000


async def fill(running: RunningStore, space: str, flow_id: str, n: int, per_append: int) -> None:
    version = 0
    while version < n:
        batch = [ev(i=i) for i in range(version + 1, min(version + per_append, n) + 1)]
        await append(running.stub, space, flow_id, version, *batch)
        version += len(batch)


async def test_25k_events_arrive_in_order_in_several_bounded_messages(
    store_service: RunningStore,
) -> None:
    space = ns()
    flow = await create_flow(store_service.stub, space)
    await fill(store_service, space, flow.flow_id, N_EVENTS, per_append=1000)
    limit = store_service.server.settings.limits.max_message_bytes

    sizes: list[int] = []
    versions: list[int] = []
    payloads: list[int] = []
    async for response in store_service.stub.ReadEvents(
        store_pb2.ReadEventsRequest(namespace=space, flow_id=flow.flow_id)
    ):
        sizes.append(response.ByteSize())
        versions.extend(e.version for e in response.events)
        payloads.extend(json.loads(e.payload_json)["i"] for e in response.events)
    assert versions == list(range(1, N_EVENTS + 1))
    assert payloads == versions
    assert len(sizes) == N_EVENTS // 1000  # the default chunk size
    assert max(sizes) <= limit


async def test_large_payloads_are_split_by_bytes_below_the_message_limit() -> None:
    # 256 KiB messages, ~60 KiB payloads: a chunk of 1000 events must be cut by size.
    limits = Limits(max_payload_bytes=128 * 1024, max_message_bytes=256 * 1024)
    store = MemoryEventStore()
    async with running_store(store, store_settings(limits=limits)) as running:
        space = ns()
        flow = await create_flow(running.stub, space)
        blob = "z" * (60 * 1024)
        for v in range(30):
            await append(running.stub, space, flow.flow_id, v, ev(i=v + 1, blob=blob))
        messages: list[store_pb2.ReadEventsResponse] = []
        async for response in running.stub.ReadEvents(
            store_pb2.ReadEventsRequest(namespace=space, flow_id=flow.flow_id, chunk_size=1000)
        ):
            messages.append(response)
        assert len(messages) > 1
        assert all(m.ByteSize() <= limits.max_message_bytes for m in messages)
        assert all(len(m.events) >= 1 for m in messages)
        got = [e.version for m in messages for e in m.events]
        assert got == list(range(1, 31))

        # The same holds for the feed.
        feed = running.stub.Subscribe(store_pb2.SubscribeRequest(namespace=space))
        items: list[int] = []
        try:
            while len(items) < 30:
                message = await feed.read()
                assert isinstance(message, store_pb2.SubscribeResponse)
                assert message.ByteSize() <= limits.max_message_bytes
                items.extend(f.event.version for f in message.events)
        finally:
            feed.cancel()
        assert items == list(range(1, 31))
    await store.close()


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "server_stream", "grpc_service": "flowledger.v1.StoreService",
         "grpc_method": method, "grpc_code": code},
    )
    return value or 0.0


async def test_cancelling_a_live_subscription_ends_the_handler(
    store_service: RunningStore,
) -> None:
    space = ns()
    flow = await create_flow(store_service.stub, space)
    await append(store_service.stub, space, flow.flow_id, 0, ev(n=1))
    cancelled_before = handled("Subscribe", "Canceled")

    call = store_service.stub.Subscribe(store_pb2.SubscribeRequest(namespace=space))
    first = await call.read()
    assert isinstance(first, store_pb2.SubscribeResponse)
    assert len(first.events) == 1
    # The handler now waits for live events; the client goes away mid-stream.
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    await wait_until(
        lambda: handled("Subscribe", "Canceled") == cancelled_before + 1,
        "the server to finish the cancelled Subscribe",
    )
    # The service is unaffected: appends and a new subscription work.
    await append(store_service.stub, space, flow.flow_id, 1, ev(n=2))
    again = store_service.stub.Subscribe(store_pb2.SubscribeRequest(namespace=space))
    try:
        got: list[int] = []
        while len(got) < 2:
            response = await again.read()
            assert isinstance(response, store_pb2.SubscribeResponse)
            got.extend(f.event.version for f in response.events)
        assert got == [1, 2]
    finally:
        again.cancel()


async def test_cancelling_a_read_mid_stream(store_service: RunningStore) -> None:
    space = ns()
    flow = await create_flow(store_service.stub, space)
    await fill(store_service, space, flow.flow_id, 3000, per_append=1000)
    before = handled("ReadEvents", "Canceled")
    call = store_service.stub.ReadEvents(
        store_pb2.ReadEventsRequest(namespace=space, flow_id=flow.flow_id, chunk_size=1)
    )
    first = await call.read()
    assert isinstance(first, store_pb2.ReadEventsResponse)
    call.cancel()
    await wait_until(
        lambda: handled("ReadEvents", "Canceled") == before + 1,
        "the server to finish the cancelled ReadEvents",
    )


async def _read_feed(call: grpc.aio.UnaryStreamCall[store_pb2.SubscribeRequest,
                                                    store_pb2.SubscribeResponse],
                     ) -> AsyncIterator[common_pb2.Event]:
    async for response in call:
        for item in response.events:
            yield item.event


async def test_draining_ends_subscriptions_with_unavailable() -> None:
    store = MemoryEventStore()
    async with running_store(store) as running:
        space = ns()
        flow = await create_flow(running.stub, space)
        await append(running.stub, space, flow.flow_id, 0, ev(n=1))
        call = running.stub.Subscribe(store_pb2.SubscribeRequest(namespace=space))
        first = await call.read()
        assert isinstance(first, store_pb2.SubscribeResponse)
        await running.server.begin_drain()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failure(caught.value).reason == "SHUTTING_DOWN"
        # New subscriptions are refused while draining; other calls still work.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in _read_feed(
                running.stub.Subscribe(store_pb2.SubscribeRequest(namespace=space))
            ):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await append(running.stub, space, flow.flow_id, 1, ev(n=2))
    await store.close()
