"""GrpcEventStore's appends over the shared AppendStream: deadlines, a stream that breaks or is
drained, cancellation, close, and the fallback to AppendEvents for a store without the stream.

Real store service on loopback over both backends; a GatedStore holds answers back so each
moment is exact, and a TCP proxy moves the client to another replica.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from engine_service.store_client.client import GrpcEventStore
from flowledger.errors import FailedPrecondition, Unavailable
from flowledger.v1 import store_pb2_grpc
from flowledger_core.domain import Append, NewFlow
from flowledger_core.ports import EventStore
from store_service import append_stream
from store_service.grpc_api import StoreServicer
from store_service.settings import Limits
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_client import BOUND, FAST, TINY, client_handled, dead_port
from tests.fixtures.store_server import running_store, wait_until
from tests.fixtures.tcp_proxy import ProxyFactory, TcpProxy
from tests.store.helpers import ev, read_all


async def test_appends_share_one_stream(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    flows = [(await grpc_store.create_flow(NewFlow(ns, f"f{i}")))[0].flow_id for i in range(8)]
    # One append opens the stream; by its answer the client has read the store's word that it
    # reads `more` (the stream's initial metadata).
    warm = await grpc_store.create_flow(NewFlow(ns, "warm"))
    await grpc_store.append(Append(ns, warm[0].flow_id, 0, "c-0", (ev(n=0),)))
    before = client_handled("AppendEvents", "OK")
    received = _stream_messages("received")

    async def run(flow_id: str) -> list[int]:
        return [
            (await grpc_store.append(Append(ns, flow_id, v, f"c-{v}", (ev(n=v),)))).last_version
            for v in range(4)
        ]

    results = await asyncio.wait_for(asyncio.gather(*(run(f) for f in flows)), BOUND)
    assert results == [[1, 2, 3, 4]] * len(flows)
    assert client_handled("AppendEvents", "OK") == before  # no unary call
    # Appends that wait to be written together go in one message (`more`): the first eight,
    # made at once, at least. (The store's side: test_append_stream_coalesced.py.)
    assert 0 < _stream_messages("received") - received <= 4 * len(flows) - (len(flows) - 1)
    for flow_id in flows:
        events = await read_all(store_backend, ns, flow_id)
        assert [(e.version, e.command_id) for e in events] == [
            (v, f"c-{v - 1}") for v in (1, 2, 3, 4)
        ]


async def test_a_store_that_does_not_read_more_gets_one_command_per_message(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that predates `more` would drop the commands in it: without the store's word
    (initial metadata), the client sends each command in a message of its own."""
    monkeypatch.setattr(append_stream, "ADVERTISED", ())  # what an older store sends
    flows = [(await grpc_store.create_flow(NewFlow(ns, f"f{i}")))[0].flow_id for i in range(8)]
    received = _stream_messages("received")

    async def run(flow_id: str) -> list[int]:
        return [
            (await grpc_store.append(Append(ns, flow_id, v, f"c-{v}", (ev(n=v),)))).last_version
            for v in range(3)
        ]

    results = await asyncio.wait_for(asyncio.gather(*(run(f) for f in flows)), BOUND)
    assert results == [[1, 2, 3]] * len(flows)
    assert _stream_messages("received") - received == 3 * len(flows)


async def test_an_answer_past_the_deadline_is_dropped_and_the_append_retried(
    gated_store: GatedStore, store_port: int, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    late = gated_store.hold("append")  # the first attempt is applied, its answer held
    client = GrpcEventStore(f"127.0.0.1:{store_port}", replace(FAST, call_timeout=0.3))
    try:
        result = await asyncio.wait_for(
            client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1),))), BOUND
        )
        assert late.reached.is_set()
        assert result.duplicate  # the retry found the first attempt's work
        assert (result.first_version, result.last_version) == (1, 1)
        late.release.set()  # the late answer arrives and is ignored; the stream goes on
        again = await asyncio.wait_for(
            client.append(Append(ns, flow.flow_id, 1, "c-2", (ev(n=2),))), BOUND
        )
        assert (again.last_version, again.duplicate) == (2, False)
    finally:
        await client.close()
    assert [e.command_id for e in await read_all(store_backend, ns, flow.flow_id)] == ["c-1", "c-2"]


async def test_a_cancelled_append_leaves_the_stream_to_the_others(
    grpc_store: GrpcEventStore, gated_store: GatedStore, store_backend: EventStore, ns: str
) -> None:
    one, _ = await store_backend.create_flow(NewFlow(ns, "one"))
    two, _ = await store_backend.create_flow(NewFlow(ns, "two"))
    held = gated_store.hold("append")
    cancelled = asyncio.create_task(grpc_store.append(Append(ns, one.flow_id, 0, "c-1", (ev(),))))
    await asyncio.wait_for(held.reached.wait(), BOUND)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    other = await asyncio.wait_for(
        grpc_store.append(Append(ns, two.flow_id, 0, "c-2", (ev(),))), BOUND
    )
    assert other.last_version == 1
    held.release.set()


async def test_appends_move_to_another_replica_when_their_store_drains(
    gated_store: GatedStore, store_backend: EventStore, tcp_proxy: ProxyFactory, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    async with (
        running_store(gated_store) as first,
        tcp_proxy("127.0.0.1", first.server.port) as proxy,
    ):
        client = GrpcEventStore(f"127.0.0.1:{proxy.port}", FAST)
        try:
            await client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1),)))
            held = gated_store.hold("append")
            in_flight = asyncio.create_task(
                client.append(Append(ns, flow.flow_id, 1, "c-2", (ev(n=2),)))
            )
            await asyncio.wait_for(held.reached.wait(), BOUND)
            async with running_store(gated_store) as second:
                proxy.target_port = second.server.port
                stopping = asyncio.create_task(first.server.stop(grace=BOUND))
                await wait_until(lambda: first.server.servicer.draining, "the drain", BOUND)
                held.release.set()  # answered before the stream ends UNAVAILABLE
                assert (await asyncio.wait_for(in_flight, BOUND)).last_version == 2
                await asyncio.wait_for(stopping, BOUND)
                # The next append opens a new stream, through the proxy, to the second store.
                third = await asyncio.wait_for(
                    client.append(Append(ns, flow.flow_id, 2, "c-3", (ev(n=3),))), BOUND
                )
                assert (third.last_version, third.duplicate) == (3, False)
        finally:
            await client.close()
    assert [e.version for e in await read_all(store_backend, ns, flow.flow_id)] == [1, 2, 3]


async def test_a_broken_stream_fails_over_to_a_new_one(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    lost = gated_store.hold("append")
    appending = asyncio.create_task(
        proxied_store.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1), ev(n=2))))
    )
    await asyncio.wait_for(lost.reached.wait(), BOUND)  # applied; the answer is held ...
    await store_proxy.reset_all()  # ... and lost with the stream
    result = await asyncio.wait_for(appending, BOUND)
    assert (result.first_version, result.last_version, result.duplicate) == (1, 2, True)
    events = await read_all(store_backend, ns, flow.flow_id)
    assert [(e.version, e.command_id) for e in events] == [(1, "c-1"), (2, "c-1")]


async def test_close_fails_pending_appends_and_ends_the_stream(
    gated_store: GatedStore, store_port: int, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    client = GrpcEventStore(f"127.0.0.1:{store_port}", FAST)
    held = gated_store.hold("append")
    pending = asyncio.create_task(client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(),))))
    await asyncio.wait_for(held.reached.wait(), BOUND)
    await client.close()
    with pytest.raises(FailedPrecondition) as info:
        await asyncio.wait_for(pending, BOUND)
    assert info.value.reason == "CLIENT_CLOSED"
    with pytest.raises(FailedPrecondition):
        await client.append(Append(ns, flow.flow_id, 1, "c-2", (ev(),)))
    held.release.set()


async def test_an_unreachable_store_is_unavailable_and_close_still_returns(ns: str) -> None:
    client = GrpcEventStore(f"127.0.0.1:{dead_port()}", TINY)
    try:
        with pytest.raises(Unavailable) as info:
            await asyncio.wait_for(
                client.append(Append(ns, str(uuid.uuid4()), 0, "c-1", (ev(),))), BOUND
            )
        assert int(info.value.metadata["attempts"]) >= 1
        waiting = asyncio.create_task(
            client.append(Append(ns, str(uuid.uuid4()), 0, "c-2", (ev(),)))
        )
        await asyncio.sleep(0)  # one step: it is queued on the stream that never connects
    finally:
        await asyncio.wait_for(client.close(), BOUND)  # not held up by the unconnected stream
    with pytest.raises(FailedPrecondition):
        await asyncio.wait_for(waiting, BOUND)


class _BeforeAppendStream(grpc.aio.ServerInterceptor):
    """Makes the store one from before AppendStream: that method is unknown (UNIMPLEMENTED)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        if handler_call_details.method.endswith("/AppendStream"):
            return None
        return await continuation(handler_call_details)


@pytest.fixture
async def old_store_port(store_backend: EventStore) -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=[_BeforeAppendStream()])
    store_pb2_grpc.add_StoreServiceServicer_to_server(
        StoreServicer(store_backend, Limits()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(0)


async def test_a_store_without_the_stream_gets_unary_appends(
    old_store_port: int, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    client = GrpcEventStore(f"127.0.0.1:{old_store_port}", FAST)
    before = client_handled("AppendEvents", "OK")
    try:
        first = await asyncio.wait_for(
            client.append(Append(ns, flow.flow_id, 0, "c-1", (ev(n=1),))), BOUND
        )
        second = await asyncio.wait_for(
            client.append(Append(ns, flow.flow_id, 1, "c-2", (ev(n=2),))), BOUND
        )
    finally:
        await client.close()
    assert (first.last_version, second.last_version) == (1, 2)
    assert client_handled("AppendEvents", "OK") == before + 2


def _stream_messages(direction: str) -> float:
    """AppendStream messages the store (served in this process) received or sent so far."""
    return REGISTRY.get_sample_value(f"grpc_server_msg_{direction}_total", {
        "grpc_type": "bidi_stream", "grpc_service": "flowledger.v1.StoreService",
        "grpc_method": "AppendStream",
    }) or 0.0
