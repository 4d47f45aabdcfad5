"""The namespace feed: catch-up then live, cursors, filters, concurrency, closing."""

from __future__ import annotations

import asyncio

import pytest

from flowledger.errors import InvalidArgument, Unavailable
from flowledger_core.domain import EventType, FeedEvent
from flowledger_core.ports import EventStore
from tests.store.helpers import Feed, aclose, append, ev, new_flow


def seqs(events: list[FeedEvent]) -> list[int]:
    return [f.event.seq for f in events]


async def test_catch_up_then_live_then_resume(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    first = await append(store, ns, flow.flow_id, 0, ev(n=1), ev(n=2), ev(n=3))
    feed = Feed(store.subscribe(ns, chunk_size=2))
    try:
        assert seqs(await feed.wait_for_count(3)) == list(first.seqs)
        live = await append(store, ns, flow.flow_id, 3, ev(n=4), ev(n=5))
        got = await feed.wait_for_count(5)
        assert seqs(got) == list(first.seqs + live.seqs)
        assert [f.event.version for f in got] == [1, 2, 3, 4, 5]
    finally:
        await feed.close()
    resumed = Feed(store.subscribe(ns, after_cursor=got[1].cursor))
    try:
        assert seqs(await resumed.wait_for_count(3)) == seqs(got[2:])
        sentinel = await append(store, ns, flow.flow_id, 5, ev(n=6))
        tail = await resumed.wait_for_seq(sentinel.seqs[0])
        assert seqs(tail) == [*seqs(got[2:]), sentinel.seqs[0]]
    finally:
        await resumed.close()


async def test_type_filter_and_namespace_scope(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    stranger = await new_flow(store, ns + "-other")
    await append(store, ns + "-other", stranger.flow_id, 0, ev(EventType.STEP_FINISHED))
    r = await append(
        store,
        ns,
        flow.flow_id,
        0,
        ev(EventType.STEP_STARTED),
        ev(EventType.STEP_FINISHED),
        ev(EventType.STEP_FAILED),
        ev(EventType.STEP_FINISHED),
    )
    feed = Feed(store.subscribe(ns, types=[EventType.STEP_FINISHED, EventType.STEP_FAILED]))
    try:
        got = await feed.wait_for_count(3)
        assert seqs(got) == list(r.seqs[1:])
        sentinel = await append(store, ns, flow.flow_id, 4, ev(EventType.STEP_FINISHED))
        got = await feed.wait_for_seq(sentinel.seqs[0])
        assert seqs(got) == [*r.seqs[1:], sentinel.seqs[0]]
        assert {f.event.flow_id for f in got} == {flow.flow_id}
    finally:
        await feed.close()


@pytest.mark.parametrize("cursor", ["not a cursor!", "%%%%", "-1", "\x00"])
async def test_malformed_cursor_is_invalid(store: EventStore, ns: str, cursor: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await anext(store.subscribe(ns, after_cursor=cursor))
    assert [v.field for v in err.value.violations] == ["after_cursor"]


async def test_closing_a_subscription_ends_it_cleanly(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(), ev())
    it = store.subscribe(ns, chunk_size=1)
    chunk = await asyncio.wait_for(anext(it), 30)
    assert len(chunk) == 1
    await aclose(it)
    with pytest.raises(StopAsyncIteration):
        await anext(it)
    # A subscriber waiting for live events is ended by cancelling its consumer.
    for _ in range(3):
        feed = Feed(store.subscribe(ns))
        await feed.wait_for_count(2)
        await feed.close()
    assert (await append(store, ns, flow.flow_id, 2, ev())).last_version == 3


async def test_subscriber_under_concurrent_writers(store: EventStore, ns: str) -> None:
    flows = [await new_flow(store, ns, name=f"f{i}") for i in range(8)]
    live = Feed(store.subscribe(ns, chunk_size=7))
    written: list[int] = []

    async def writer(flow_id: str, w: int) -> None:
        version = 0
        for r in range(25):
            res = await append(store, ns, flow_id, version, *[ev(w=w, r=r)] * (1 + r % 3))
            version = res.last_version
            written.extend(res.seqs)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(writer(f.flow_id, w) for w, f in enumerate(flows))), 120
        )
        head = (await store.get_flow(ns, flows[0].flow_id)).version
        sentinel = (await append(store, ns, flows[0].flow_id, head, ev())).seqs[0]
        got = await live.wait_for_seq(sentinel)
    finally:
        await live.close()
    delivered = seqs(got)
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    assert sorted(delivered) == sorted([*written, sentinel]), "an event was missed"
    for flow in flows:
        versions = [f.event.version for f in got if f.event.flow_id == flow.flow_id]
        assert versions == list(range(1, len(versions) + 1))
    # A late subscriber catching up sees the same order, and a cursor resumes exactly after.
    late = Feed(store.subscribe(ns))
    try:
        assert seqs(await late.wait_for_count(len(got))) == delivered
    finally:
        await late.close()
    middle = len(got) // 2
    tail = Feed(store.subscribe(ns, after_cursor=got[middle].cursor))
    try:
        assert seqs(await tail.wait_for_seq(sentinel)) == delivered[middle + 1 :]
    finally:
        await tail.close()


@pytest.mark.not_over_grpc(
    reason="closing GrpcEventStore ends its subscriptions and refuses later calls "
    "FailedPrecondition CLIENT_CLOSED (the engine's contract, tests/engine_service/"
    "store_client/test_append_stream.py), where the backends raise Unavailable SHUTTING_DOWN"
)
async def test_closing_the_store_ends_live_subscriptions(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev())
    it = store.subscribe(ns)
    assert len(await asyncio.wait_for(anext(it), 30)) == 1
    waiting = asyncio.ensure_future(anext(it))  # parked on the live tail
    await store.close()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(waiting, 30)
    with pytest.raises(Unavailable):
        await store.get_flow(ns, flow.flow_id)
