"""WatchFlow: a flow's events from a version on, catch-up then live, until the flow ends.

Mechanism: the store's ``read_events`` from the last version delivered, repeated. A flow's log
is gapless by version (the store guarantees it per flow), so "after the last version seen" never
skips or repeats an event. Between reads the watcher waits for either

* a local wake-up: the work loop of *this* replica notifies after every step it records
  (:class:`FlowNotifier`), so watching a flow that runs here costs no idle polling; or
* a poll timer, 50 ms doubling to 1 s while nothing arrives, for flows other replicas run.

The store's Subscribe feed was not used: it is namespace-wide (every event of every flow of the
namespace would cross the wire to find one flow's), and a per-flow read from a version is exactly
what resuming needs. A client that reconnects passes the last version it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from flowledger.errors import Unavailable
from store_service.domain import EventType, FlowStatus, StoredEvent
from store_service.ports import EventStore

MIN_POLL_S = 0.05
MAX_POLL_S = 1.0

_TERMINAL = {
    EventType.FLOW_COMPLETED: FlowStatus.COMPLETED,
    EventType.FLOW_FAILED: FlowStatus.FAILED,
    EventType.FLOW_CANCELLED: FlowStatus.CANCELLED,
}


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[StoredEvent, ...]
    # The flow's status after these events.
    status: FlowStatus


class FlowNotifier:
    """Wakes the watchers of a flow when this replica recorded something in it."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], set[asyncio.Event]] = {}

    def notify(self, namespace: str, flow_id: str) -> None:
        for event in self._listeners.get((namespace, flow_id), ()):
            event.set()

    @contextlib.contextmanager
    def listen(self, namespace: str, flow_id: str) -> Iterator[asyncio.Event]:
        key = (namespace, flow_id)
        event = asyncio.Event()
        self._listeners.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[key]


async def watch_flow(
    store: EventStore,
    notifier: FlowNotifier,
    namespace: str,
    flow_id: str,
    after_version: int,
    stopping: asyncio.Event,
) -> AsyncIterator[WatchBatch]:
    """Batches of new events until the flow ended (NotFound for an unknown flow). When
    ``stopping`` is set (the server drains) the stream ends with Unavailable, so that the client
    resumes from its last version on another replica."""
    flow = await store.get_flow(namespace, flow_id)
    status = flow.status
    after = after_version
    delay = MIN_POLL_S
    with notifier.listen(namespace, flow_id) as wake:
        while True:
            wake.clear()
            events: list[StoredEvent] = []
            async for chunk in store.read_events(namespace, flow_id, after_version=after):
                events.extend(chunk)
            if events:
                after = events[-1].version
                status = _status_after(events, status)
                yield WatchBatch(tuple(events), status)
                delay = MIN_POLL_S
            if status.terminal:
                return
            if stopping.is_set():
                raise _shutting_down(after)
            await _first_of(wake, stopping, delay)
            delay = min(delay * 2, MAX_POLL_S)


def _status_after(events: list[StoredEvent], status: FlowStatus) -> FlowStatus:
    for event in events:
        if event.type in _TERMINAL:
            return _TERMINAL[event.type]
        if event.type is EventType.FLOW_INITIALIZED and status is FlowStatus.QUEUED:
            status = FlowStatus.RUNNING
    return status


async def _first_of(wake: asyncio.Event, stopping: asyncio.Event, wait_s: float) -> None:
    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopping.wait())}
    try:
        await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _shutting_down(after: int) -> Unavailable:
    return Unavailable(
        f"the engine is shutting down; watch again from after_version={after}",
        reason="SHUTTING_DOWN",
        metadata={"after_version": str(after)},
    )
