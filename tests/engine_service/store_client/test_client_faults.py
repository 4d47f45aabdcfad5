"""GrpcEventStore when things go wrong: a store down, hung or restarting, connections cut.

Faults are real: a TCP proxy that resets connections, a port where nothing listens, a server
that drains and stops, a :class:`~tests.fixtures.gated_store.GatedStore` that holds an answer
back so the connection can be cut exactly between "applied" and "answered". Waits are bounded.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from engine_service.store_client.client import GrpcEventStore
from flowledger.errors import FailedPrecondition, Unavailable
from flowledger_core.domain import Append, FlowFilter, NewFlow, Page
from flowledger_core.ports import EventStore
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_client import BOUND, FAST, TINY, dead_port
from tests.fixtures.store_server import running_store, wait_until
from tests.fixtures.tcp_proxy import ProxyFactory, TcpProxy
from tests.store.helpers import Feed, aclose, ev, read_all

# -- an unreachable or slow store ----------------------------------------------------------------


async def test_a_store_that_starts_late_is_waited_for(
    store_backend: EventStore, tcp_proxy: ProxyFactory, ns: str
) -> None:
    async with tcp_proxy("127.0.0.1", dead_port()) as proxy:
        client = GrpcEventStore(f"127.0.0.1:{proxy.port}", FAST)
        try:
            created = asyncio.create_task(client.create_flow(NewFlow(ns, "late")))
            # The second connection only comes after the first failed: the store was down.
            await wait_until(lambda: proxy.accepted >= 2, "a second connection", BOUND)
            assert not created.done()
            async with running_store(store_backend) as running:
                proxy.target_port = running.server.port
                flow, existed = await asyncio.wait_for(created, BOUND)
                assert not existed
                assert flow == await store_backend.get_flow(ns, flow.flow_id)
        finally:
            await client.close()


async def test_a_store_that_never_comes_up_is_unavailable_after_the_budget(ns: str) -> None:
    client = GrpcEventStore(f"127.0.0.1:{dead_port()}", TINY)
    try:
        with pytest.raises(Unavailable) as info:
            await asyncio.wait_for(client.get_flow(ns, str(uuid.uuid4())), BOUND)
        assert int(info.value.metadata["attempts"]) >= 1
        with pytest.raises(Unavailable):
            await asyncio.wait_for(read_all(client, ns, str(uuid.uuid4())), BOUND)

        async def first_chunk() -> None:
            await anext(client.subscribe(ns))

        with pytest.raises(Unavailable):
            await asyncio.wait_for(first_chunk(), BOUND)
    finally:
        await client.close()


async def test_an_attempt_past_its_deadline_is_abandoned_and_retried(
    gated_store: GatedStore, store_port: int, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    hung = gated_store.hold("get_flow", before=True)  # the first attempt never gets an answer
    client = GrpcEventStore(f"127.0.0.1:{store_port}", replace(FAST, call_timeout=0.3))
    try:
        assert await asyncio.wait_for(client.get_flow(ns, flow.flow_id), BOUND) == flow
        assert hung.reached.is_set()
    finally:
        await client.close()


# -- lost responses and dropped streams ----------------------------------------------------------


@pytest.mark.parametrize("append_stream", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("grpc_retries", [1, 0], ids=["grpc-retries", "client-retries-only"])
async def test_an_append_whose_response_is_lost_is_applied_once(
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
    grpc_retries: int,
    append_stream: bool,
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    # Either layer must cope alone: gRPC's retry policy, or (switched off) the client's loop.
    client = GrpcEventStore(
        f"127.0.0.1:{store_proxy.port}", FAST, options=[("grpc.enable_retries", grpc_retries)],
        append_stream=append_stream,
    )
    lost = gated_store.hold("append")
    try:
        appending = asyncio.create_task(
            client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1), ev(n=2))))
        )
        await asyncio.wait_for(lost.reached.wait(), BOUND)  # applied; the answer is held
        await store_proxy.reset_all()  # ... and lost with the connection
        result = await asyncio.wait_for(appending, BOUND)
    finally:
        await client.close()
    assert (result.first_version, result.last_version) == (1, 2)
    assert store_proxy.accepted >= 2
    events = await read_all(store_backend, ns, flow.flow_id)
    assert [(e.version, e.command_id) for e in events] == [(1, "c-1"), (2, "c-1")]
    assert list(result.seqs) == [e.seq for e in events]


async def test_a_create_whose_response_is_lost_is_still_a_creation(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    lost = gated_store.hold("create_flow")
    creating = asyncio.create_task(proxied_store.create_flow(NewFlow(ns, "once")))
    await asyncio.wait_for(lost.reached.wait(), BOUND)
    await store_proxy.reset_all()
    flow, existed = await asyncio.wait_for(creating, BOUND)
    assert not existed  # the id was ours: the "existing" flow is this call's own
    page = await store_backend.list_flows(FlowFilter(ns), Page())
    assert [f.flow_id for f in page.flows] == [flow.flow_id]


async def test_a_leased_create_whose_response_is_lost_is_one_flow(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    """The repeat finds the flow its first attempt made (leased, under a token it never saw):
    one flow, reported as this call's creation, without the lease or the append's answer."""
    lost = gated_store.hold("create_flow")
    creating = asyncio.create_task(
        proxied_store.create_flow_with(NewFlow(ns, "once"), lease=("replica-a", 60_000))
    )
    await asyncio.wait_for(lost.reached.wait(), BOUND)
    await store_proxy.reset_all()
    created = await asyncio.wait_for(creating, BOUND)
    assert not created.existed
    assert created.lease is None
    page = await store_backend.list_flows(FlowFilter(ns), Page())
    assert [f.flow_id for f in page.flows] == [created.flow.flow_id]


async def test_a_read_resumes_after_a_dropped_connection(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    await store_backend.append(Append(ns, flow.flow_id, 0, "c-1", tuple(ev(n=i) for i in range(5))))
    paused = gated_store.hold("read_events")  # after the first chunk
    chunks = proxied_store.read_events(ns, flow.flow_id, chunk_size=2)
    try:
        first = await asyncio.wait_for(anext(chunks), BOUND)
        await asyncio.wait_for(paused.reached.wait(), BOUND)
        await store_proxy.reset_all()
        rest = [e for chunk in [c async for c in chunks] for e in chunk]
    finally:
        await aclose(chunks)
    assert [*first, *rest] == await read_all(store_backend, ns, flow.flow_id)
    assert store_proxy.accepted >= 2


async def test_a_subscription_resumes_from_its_last_cursor(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    await store_backend.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1), ev(n=2), ev(n=3))))
    paused = gated_store.hold("subscribe")  # after the first chunk
    feed = Feed(proxied_store.subscribe(ns, chunk_size=1))
    try:
        await feed.wait_for_count(1, BOUND)
        await asyncio.wait_for(paused.reached.wait(), BOUND)
        await store_proxy.reset_all()
        # Written while the subscriber is cut off: it must get them on resuming.
        await store_backend.append(Append(ns, flow.flow_id, 3, "c-2", (ev(n=4), ev(n=5))))
        got = await feed.wait_for_count(5, BOUND)
    finally:
        await feed.close()
    assert [f.event for f in got] == await read_all(store_backend, ns, flow.flow_id)
    assert store_proxy.accepted >= 2


async def test_a_subscription_moves_to_another_replica_when_its_store_stops(
    gated_store: GatedStore, store_backend: EventStore, tcp_proxy: ProxyFactory, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    await store_backend.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1), ev(n=2))))
    async with (
        running_store(gated_store) as first,
        tcp_proxy("127.0.0.1", first.server.port) as proxy,
    ):
        client = GrpcEventStore(f"127.0.0.1:{proxy.port}", FAST)
        feed = Feed(client.subscribe(ns))
        try:
            await feed.wait_for_count(2, BOUND)
            async with running_store(gated_store) as second:
                proxy.target_port = second.server.port
                await first.server.stop(grace=1.0)  # drains: the stream ends UNAVAILABLE
                await store_backend.append(Append(ns, flow.flow_id, 2, "c-2", (ev(n=3),)))
                got = await feed.wait_for_count(3, BOUND)
                await feed.close()
        finally:
            await feed.close()
            await client.close()
    assert [f.event for f in got] == await read_all(store_backend, ns, flow.flow_id)


# -- cancellation and close ----------------------------------------------------------------------


async def test_closing_a_subscription_cancels_the_rpc(
    grpc_store: GrpcEventStore, gated_store: GatedStore, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    await store_backend.append(Append(ns, flow.flow_id, 0, "c-1", (ev(),)))
    chunks = grpc_store.subscribe(ns)
    await asyncio.wait_for(anext(chunks), BOUND)
    assert gated_store.subscriptions_open == 1
    await aclose(chunks)
    await asyncio.wait_for(gated_store.subscription_closed.wait(), BOUND)  # the server let go
    assert gated_store.subscriptions_open == 0


async def test_close_ends_subscriptions_and_refuses_further_calls(
    gated_store: GatedStore, store_port: int, ns: str
) -> None:
    client = GrpcEventStore(f"127.0.0.1:{store_port}", FAST)
    ended = asyncio.Event()

    async def consume() -> None:
        async for _ in client.subscribe(ns):
            pass
        ended.set()

    consumer = asyncio.create_task(consume())
    await wait_until(lambda: gated_store.subscriptions_open == 1, "the stream to open", BOUND)
    await client.close()
    await asyncio.wait_for(consumer, BOUND)  # ended, not failed
    assert ended.is_set()
    with pytest.raises(FailedPrecondition):
        await client.get_flow(ns, str(uuid.uuid4()))
