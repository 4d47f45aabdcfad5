"""WatchFlow's wire form converts each event once (issue 16): an event read from the store goes
out as the very message the store client received, never decoded to a StoredEvent and encoded
back; an event kept or pushed here is encoded once, and only when a batch shows it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from engine_service.api import convert
from engine_service.api.watch import Batch, EventForm, follow_flow
from engine_service.store_client.client import GrpcEventStore
from engine_service.work.notifier import FlowNotifier
from flowledger.v1 import common_pb2
from flowledger_core.domain import EventType, StoredEvent
from flowledger_core.ports import EventStore
from flowledger_core.wire import store_client as wire
from tests.store.helpers import append, ev, new_flow

NS = "wire"


class Recording:
    """The store client's event messages, remembering every message object handed out."""

    def __init__(self, client: GrpcEventStore) -> None:
        self.client = client
        self.handed: list[common_pb2.Event] = []

    async def read_event_messages(
        self, namespace: str, flow_id: str, after_version: int = 0
    ) -> AsyncIterator[Sequence[common_pb2.Event]]:
        async for chunk in self.client.read_event_messages(namespace, flow_id, after_version):
            self.handed.extend(chunk)
            yield chunk


async def follow(
    form: EventForm[common_pb2.Event],
    store: EventStore,
    notifier: FlowNotifier,
    flow_id: str,
    close_only: bool = False,
) -> list[Batch[common_pb2.Event]]:
    async with asyncio.timeout(20):
        return [
            b
            async for b in follow_flow(
                form, store, notifier, NS, flow_id, 0, asyncio.Event(), close_only
            )
        ]


async def test_events_read_from_the_store_are_forwarded_as_received(
    store_backend: EventStore, grpc_store: GrpcEventStore
) -> None:
    flow = await new_flow(store_backend, NS)
    await append(store_backend, NS, flow.flow_id, 0, ev(EventType.FLOW_INITIALIZED), ev())
    await append(store_backend, NS, flow.flow_id, 2, ev(EventType.FLOW_COMPLETED))
    recording = Recording(grpc_store)

    # A flow this replica did not create: the watch reads the store.
    batches = await follow(
        convert.message_form(grpc_store, recording), grpc_store, FlowNotifier(), flow.flow_id
    )

    delivered = [e for b in batches for e in b.events]
    assert len(delivered) == 3
    # The same objects: nothing between the store client and the response converted them.
    assert all(d is h for d, h in zip(delivered, recording.handed, strict=True))
    stored = [e async for chunk in store_backend.read_events(NS, flow.flow_id) for e in chunk]
    sent = [e for b in batches for e in convert.watch_response(b).events]
    assert [wire.event_from_pb(e) for e in sent] == stored


def counted(form: EventForm[common_pb2.Event], calls: list[int]) -> EventForm[common_pb2.Event]:
    local: Callable[[StoredEvent], common_pb2.Event] = form.local

    def once(event: StoredEvent) -> common_pb2.Event:
        calls.append(event.version)
        return local(event)

    return EventForm(form.read, once, form.kind)


def kept_event(version: int, kind: EventType) -> StoredEvent:
    return StoredEvent(version, "f", version, kind, "{}", datetime.now(UTC), f"c{version}")


@pytest.mark.parametrize(("close_only", "encoded"), [(False, [1, 2, 3]), (True, [3])])
async def test_events_kept_here_are_encoded_once_and_only_when_shown(
    grpc_store: GrpcEventStore, close_only: bool, encoded: list[int]
) -> None:
    notifier = FlowNotifier()
    kinds = (EventType.FLOW_INITIALIZED, EventType.STEP_STARTED, EventType.FLOW_COMPLETED)
    events = tuple(kept_event(v, k) for v, k in enumerate(kinds, start=1))
    notifier.publish(NS, "f", events)
    calls: list[int] = []
    recording = Recording(grpc_store)

    # A kept log that ends the flow: served from here, without the store.
    batches = await follow(
        counted(convert.message_form(grpc_store, recording), calls), grpc_store, notifier, "f",
        close_only,
    )

    assert calls == encoded
    assert [e.version for b in batches for e in b.events] == encoded
    assert recording.handed == []
