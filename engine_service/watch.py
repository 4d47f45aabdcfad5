"""WatchFlow: a flow's events from a version on, catch-up then live, until the flow ends.

Mechanism: a flow's log is gapless by version (the store guarantees it per flow), so "the events
after the last version delivered" never skips or repeats one. The watcher gets them two ways:

* **pushed**, for a flow this replica runs: after each successful append its run hands the
  appended events to :class:`FlowNotifier`, which queues them for that flow's watchers; they are
  delivered without reading the store. A push is used only when it continues exactly from the
  last version delivered (versions at or below it are dropped, a gap means something was not
  pushed: an append whose answer was lost, another writer); anything else falls back to a read.
* **read**, ``read_events`` from the last version delivered: at the start (catch-up), on a gap,
  when this replica's run of the flow ends (lease lost, drain, error: someone else may go on),
  and on a poll timer — 50 ms doubling to 1 s while nothing arrives for flows other replicas
  run, every 1 s while this replica runs it (a safety net only; pushes normally arrive first).

A pushed event's ``ts`` is the engine's clock when the store acknowledged the append, not the
database's commit clock (the append's answer does not carry it); the version, seq, type,
payload and command id are the stored ones. Reading the log gives the database's ``ts``.

The store's Subscribe feed was not used: it is namespace-wide (every event of every flow of the
namespace would cross the wire to find one flow's), and a per-flow read from a version is exactly
what resuming needs. A client that reconnects passes the last version it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from flowledger.canonical import parse_json
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


class _Inbox:
    """One watcher's wake-up and the events pushed to it since it last took them."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.events: list[StoredEvent] = []

    def take(self) -> list[StoredEvent]:
        events, self.events = self.events, []
        return events


class FlowNotifier:
    """Hands the events this replica appends to a flow to that flow's watchers, and wakes them
    when this replica's run of the flow ends."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], set[_Inbox]] = {}
        self._producers: dict[tuple[str, str], int] = {}

    def publish(self, namespace: str, flow_id: str, events: tuple[StoredEvent, ...]) -> None:
        """Events this replica just appended to the flow (in version order, as stored)."""
        for inbox in self._listeners.get((namespace, flow_id), ()):
            inbox.events.extend(events)
            inbox.wake.set()

    def notify(self, namespace: str, flow_id: str) -> None:
        """Wake the flow's watchers without events: they read the store."""
        for inbox in self._listeners.get((namespace, flow_id), ()):
            inbox.wake.set()

    def running_here(self, namespace: str, flow_id: str) -> bool:
        return self._producers.get((namespace, flow_id), 0) > 0

    @contextlib.contextmanager
    def producing(self, namespace: str, flow_id: str) -> Iterator[None]:
        """While this replica runs the flow (and publishes what it appends)."""
        key = (namespace, flow_id)
        self._producers[key] = self._producers.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._producers[key] - 1
            if left:
                self._producers[key] = left
            else:
                del self._producers[key]
            # Whatever happens next (another replica, a retry) is seen only in the store.
            self.notify(namespace, flow_id)

    @contextlib.contextmanager
    def listen(self, namespace: str, flow_id: str) -> Iterator[_Inbox]:
        key = (namespace, flow_id)
        inbox = _Inbox()
        self._listeners.setdefault(key, set()).add(inbox)
        try:
            yield inbox
        finally:
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(inbox)
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
    # Listening before the first read: nothing pushed meanwhile is lost (duplicates are dropped).
    with notifier.listen(namespace, flow_id) as inbox:
        flow = await store.get_flow(namespace, flow_id)
        status = flow.status
        after = after_version
        delay = MIN_POLL_S
        read = True
        while True:
            if read:
                # Pushed events from now on are dropped if the read also returns them.
                inbox.wake.clear()
                inbox.take()
                events: list[StoredEvent] = []
                async for chunk in store.read_events(namespace, flow_id, after_version=after):
                    events.extend(chunk)
            else:
                inbox.wake.clear()
                pushed = _continuing(inbox.take(), after)
                if pushed is None:
                    read = True  # a gap: the log has something that was not pushed
                    continue
                events = pushed
            if events:
                after = events[-1].version
                status = _status_after(events, status)
                yield WatchBatch(tuple(events), status)
                delay = MIN_POLL_S
            if status.terminal:
                return
            if stopping.is_set():
                raise _shutting_down(after)
            if not inbox.events:
                local = notifier.running_here(namespace, flow_id)
                await _first_of(inbox.wake, stopping, MAX_POLL_S if local else delay)
                delay = min(delay * 2, MAX_POLL_S)
            # Woken by a push: deliver it; by a timer, a run's end or a bare notify: read.
            read = not inbox.events


def _continuing(pushed: list[StoredEvent], after: int) -> list[StoredEvent] | None:
    """The pushed events after version ``after`` when they continue it without a gap, else
    None (then the store must be read)."""
    events = [e for e in pushed if e.version > after]
    expected = after + 1
    for event in events:
        if event.version != expected:
            return None
        expected += 1
    return events


_WAIT_STARTS = (EventType.TIMER_STARTED, EventType.TASK_SCHEDULED)


def _status_after(
    events: list[StoredEvent], status: FlowStatus, inline_wait_ms: int = 1000
) -> FlowStatus:
    """The flow's status after ``events``, as the engine sets it (decision 0013): a wait or a
    long retry backoff makes it WAITING, a signal leaves it as it is (the step it resumes
    records its StepFinished right after), any other event means it runs."""
    for event in events:
        if event.type in _TERMINAL:
            return _TERMINAL[event.type]
        if event.type in _WAIT_STARTS:
            status = FlowStatus.WAITING
        elif event.type is EventType.STEP_ATTEMPT_FAILED:
            delay = parse_json(event.payload_json)
            delay_ms = delay.get("delay_ms", 0) if isinstance(delay, dict) else 0
            long_wait = isinstance(delay_ms, int) and delay_ms > inline_wait_ms
            status = FlowStatus.WAITING if long_wait else FlowStatus.RUNNING
        elif event.type is not EventType.SIGNAL_RECEIVED:
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
