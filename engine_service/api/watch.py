"""WatchFlow: a flow's events from a version on, catch-up then live, until the flow ends.

Mechanism: a flow's log is gapless by version (the store guarantees it per flow), so "the events
after the last version delivered" never skips or repeats one. The watcher gets them three ways:

* **kept**, for a flow this replica created: the replica's
  :class:`~engine_service.work.notifier.FlowNotifier` keeps what this replica appended to it
  from version 1 on (:mod:`engine_service.work.local_logs`, a bounded LRU). The
  catch-up is served from that log, without GetFlow or ReadEvents (the status derived from the
  events, as for any batch); when it ends with FlowCompleted, FlowFailed or FlowCancelled the
  watch ends there without touching the store at all. Without a kept log (a flow created
  elsewhere, evicted, dropped) the catch-up reads the store as below; an unknown flow, or one
  of another namespace (logs are keyed by namespace and flow id), is NOT_FOUND.
* **pushed**: every append this process makes and the store applies (its runs, StartFlow's
  FlowInitialized, signals, cancels, task outcomes) is handed to the notifier
  (``Engine.append_observer``), which queues its events for the flow's watchers; they are
  delivered without reading the store. A push is used only when it continues exactly from the
  last version delivered (versions at or below it are dropped, a gap means something was not
  pushed: an append whose answer was lost, another writer); anything else falls back to a read.
* **read**, ``read_events`` from the last version delivered: at the start (catch-up) of a flow
  without a kept log, or after a kept log that has not ended while the flow does not run here;
  on a gap; when this replica's run of the flow ends (lease lost, drain, error: someone else
  may go on); and on a poll timer — 50 ms doubling to 1 s while nothing arrives for flows other
  replicas run, every 1 s while this replica runs it (a safety net; pushes normally come first).

Why a kept log is exact: only appends the store acknowledged as applied (not refused, not a
duplicate, at the version the writer expected) are published, each as its answer arrives, with
the versions, seqs, types, payloads and command ids the store recorded; a log starts only at
version 1 and grows only by an append that starts at its last version + 1, anything else drops
it. So it is always a gapless prefix 1..k of the flow's stored log, whatever else writes to the
flow (another replica, answers arriving out of order: those show up as a gap). One exception,
outside the engine: PruneFlow, an administrative store call the engine never makes, cuts a log
behind every replica's back; a log kept from before it may go on serving the cut events until
it is evicted.

A pushed or kept event's ``ts`` is the engine's clock when the store acknowledged the append,
not the database's commit clock (the append's answer does not carry it), and its
``payload_json`` is the text the engine sent (the same JSON value; Postgres renders its jsonb
with other spacing and key order); reading the log gives the database's ``ts`` and text.

A close-only watch (WATCH_FILTER_CLOSE_EVENT, for a caller that waits for the outcome) follows
the flow by the same means and yields only the batch that ends it, cut to its terminal event:
one message instead of one per append, which is what the encoding on both sides costs.

Each event is converted once on its way to the watcher. WatchFlow follows the flow in the wire
form (:class:`EventForm`): an event read from the store goes out as the message the store sent
(the watch reads its version, its type and, for a retry's backoff, its payload, and converts
nothing); an event kept or pushed here is encoded once, when a batch shows it. The domain form
(:func:`watch_flow`, StoredEvents) follows the same way for callers inside the engine.

The store's Subscribe feed was not used: it is namespace-wide (every event of every flow of the
namespace would cross the wire to find one flow's), and a per-flow read from a version is exactly
what resuming needs. A client that reconnects passes the last version it received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from engine_service.work.notifier import FlowNotifier
from flowledger.canonical import parse_json
from flowledger.errors import Unavailable
from flowledger_core.domain import EventType, FlowStatus, StoredEvent
from flowledger_core.ports import EventStore

MIN_POLL_S = 0.05
MAX_POLL_S = 1.0

_TERMINAL = {
    EventType.FLOW_COMPLETED: FlowStatus.COMPLETED,
    EventType.FLOW_FAILED: FlowStatus.FAILED,
    EventType.FLOW_CANCELLED: FlowStatus.CANCELLED,
}


class WatchedEvent(Protocol):
    """What the watch reads of an event besides its type: a StoredEvent, or an event message
    as the store sent it (``common_pb2.Event``), which WatchFlow forwards undecoded."""

    @property
    def version(self) -> int: ...
    @property
    def payload_json(self) -> str: ...


E = TypeVar("E", bound=WatchedEvent)


@dataclass(frozen=True)
class Batch(Generic[E]):
    events: tuple[E, ...]
    # The flow's status after these events.
    status: FlowStatus


WatchBatch = Batch[StoredEvent]


@dataclass(frozen=True)
class EventForm(Generic[E]):
    """The form the watch delivers events in, and how it gets them in that form.

    ``read`` reads the flow's log after a version (chunks, as ``EventStore.read_events``);
    ``local`` turns an event kept or pushed by this replica (a StoredEvent) into the form, and
    is called only for the events a batch shows; ``kind`` is an event's type. The domain form
    (:func:`stored_form`) converts nothing; WatchFlow's wire form
    (:func:`engine_service.api.convert.message_form`) reads the store's messages and forwards
    them, so that an event read from the store is never decoded and encoded back."""

    read: Callable[[str, str, int], AsyncIterator[Sequence[E]]]
    local: Callable[[StoredEvent], E]
    kind: Callable[[E], EventType]


def _stored_kind(event: StoredEvent) -> EventType:
    return event.type


def _same(event: StoredEvent) -> StoredEvent:
    return event


def stored_form(store: EventStore) -> EventForm[StoredEvent]:
    """Events as StoredEvents, read through the store port."""

    def read(namespace: str, flow_id: str, after: int) -> AsyncIterator[Sequence[StoredEvent]]:
        return store.read_events(namespace, flow_id, after_version=after)

    return EventForm(read, _same, _stored_kind)


def watch_flow(
    store: EventStore,
    notifier: FlowNotifier,
    namespace: str,
    flow_id: str,
    after_version: int,
    stopping: asyncio.Event,
    close_only: bool = False,
) -> AsyncIterator[WatchBatch]:
    """:func:`follow_flow` in the domain form (StoredEvents read through ``store``)."""
    return follow_flow(
        stored_form(store), store, notifier, namespace, flow_id, after_version, stopping,
        close_only,
    )


async def follow_flow(
    form: EventForm[E],
    store: EventStore,
    notifier: FlowNotifier,
    namespace: str,
    flow_id: str,
    after_version: int,
    stopping: asyncio.Event,
    close_only: bool = False,
) -> AsyncIterator[Batch[E]]:
    """Batches of new events until the flow ended (NotFound for an unknown flow). When
    ``stopping`` is set (the server drains) the stream ends with Unavailable, so that the client
    resumes from its last version on another replica.

    With ``close_only`` the events are followed exactly as without it, but the only batch
    yielded is the event that ended the flow (when it comes after ``after_version``)."""
    # Listening before the first read: nothing pushed meanwhile is lost (duplicates are dropped).
    with notifier.listen(namespace, flow_id) as inbox:
        kept = notifier.local_log(namespace, flow_id)
        if kept is None:
            status = (await store.get_flow(namespace, flow_id)).status
            after = after_version
            read = True
        else:
            # Taken in the same step as listening: what is pushed from now on continues it.
            status = _status_after(kept, FlowStatus.QUEUED, _stored_kind)
            after = max(after_version, kept[-1].version)
            caught_up = [e for e in kept if e.version > after_version]
            if (shown := _shown_local(form, caught_up, status, close_only)) is not None:
                yield shown
            if status.terminal:
                return
            # Its tail comes as pushes while the flow runs here; otherwise it is in the store.
            read = not notifier.running_here(namespace, flow_id)
        delay = MIN_POLL_S
        while True:
            shown = None
            if read:
                # Pushed events from now on are dropped if the read also returns them.
                inbox.wake.clear()
                inbox.take()
                events: list[E] = []
                async for chunk in form.read(namespace, flow_id, after):
                    events.extend(chunk)
                if events:
                    after = events[-1].version
                    status = _status_after(events, status, form.kind)
                    shown = _shown(events, status, close_only, form.kind)
                    delay = MIN_POLL_S
            else:
                inbox.wake.clear()
                pushed = _continuing(inbox.take(), after)
                if pushed is None:
                    read = True  # a gap: the log has something that was not pushed
                    continue
                if pushed:
                    after = pushed[-1].version
                    status = _status_after(pushed, status, _stored_kind)
                    shown = _shown_local(form, pushed, status, close_only)
                    delay = MIN_POLL_S
            if shown is not None:
                yield shown
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


def _shown(
    events: Sequence[E], status: FlowStatus, close_only: bool, kind: Callable[[E], EventType]
) -> Batch[E] | None:
    """What a batch of new events shows the watcher: all of it; with ``close_only`` only the
    event that ended the flow, and nothing from a batch before that one."""
    if not events:
        return None
    if not close_only:
        return Batch(tuple(events), status)
    if not status.terminal:
        return None
    return Batch(tuple(e for e in events if kind(e) in _TERMINAL), status)


def _shown_local(
    form: EventForm[E], events: Sequence[StoredEvent], status: FlowStatus, close_only: bool
) -> Batch[E] | None:
    """:func:`_shown` of events kept or pushed here, each put in the form only if shown."""
    shown = _shown(events, status, close_only, _stored_kind)
    if shown is None:
        return None
    return Batch(tuple(form.local(e) for e in shown.events), status)


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
    events: Sequence[E],
    status: FlowStatus,
    kind: Callable[[E], EventType],
    inline_wait_ms: int = 1000,
) -> FlowStatus:
    """The flow's status after ``events``, as the engine sets it (decision 0013): a wait or a
    long retry backoff makes it WAITING, a signal leaves it as it is (the step it resumes
    records its StepFinished right after), any other event means it runs."""
    for event in events:
        etype = kind(event)
        if etype in _TERMINAL:
            return _TERMINAL[etype]
        if etype in _WAIT_STARTS:
            status = FlowStatus.WAITING
        elif etype is EventType.STEP_ATTEMPT_FAILED:
            delay = parse_json(event.payload_json)
            delay_ms = delay.get("delay_ms", 0) if isinstance(delay, dict) else 0
            long_wait = isinstance(delay_ms, int) and delay_ms > inline_wait_ms
            status = FlowStatus.WAITING if long_wait else FlowStatus.RUNNING
        elif etype is not EventType.SIGNAL_RECEIVED:
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
