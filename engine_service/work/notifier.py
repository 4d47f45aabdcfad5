"""What this replica appends to a flow, handed to the flow's watchers in this process.

The engine's append observer publishes every append the store applied; the work loop marks
the flows it runs (:meth:`FlowNotifier.producing`); WatchFlow (:mod:`engine_service.api.watch`)
listens, and serves a flow this replica created from the log kept here
(:mod:`engine_service.work.local_logs`). Why that is exact: see :mod:`engine_service.api.watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from engine_service.work.local_logs import LocalLogLimits, LocalLogs
from flowledger_core.domain import StoredEvent


class Inbox:
    """One watcher's wake-up and the events pushed to it since it last took them."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.events: list[StoredEvent] = []

    def take(self) -> list[StoredEvent]:
        events, self.events = self.events, []
        return events


class FlowNotifier:
    """Hands the events this replica appends to a flow to that flow's watchers, wakes them
    when this replica's run of the flow ends, and keeps the logs of the flows it created."""

    def __init__(self, limits: LocalLogLimits | None = None) -> None:
        self._listeners: dict[tuple[str, str], set[Inbox]] = {}
        self._producers: dict[tuple[str, str], int] = {}
        self._logs = LocalLogs(limits)

    def publish(self, namespace: str, flow_id: str, events: tuple[StoredEvent, ...]) -> None:
        """Events of an append this replica just made and the store applied (in version order,
        as stored); called for every such append, in the order the answers arrive."""
        key = (namespace, flow_id)
        self._logs.record(key, events)
        for inbox in self._listeners.get(key, ()):
            inbox.events.extend(events)
            inbox.wake.set()

    def notify(self, namespace: str, flow_id: str) -> None:
        """Wake the flow's watchers without events: they read the store."""
        for inbox in self._listeners.get((namespace, flow_id), ()):
            inbox.wake.set()

    def local_log(self, namespace: str, flow_id: str) -> tuple[StoredEvent, ...] | None:
        """The flow's log as appended here, versions 1..k without a gap; None when not kept."""
        return self._logs.get((namespace, flow_id))

    def watching(self, namespace: str, flow_id: str) -> int:
        """How many watches of the flow are listening here."""
        return len(self._listeners.get((namespace, flow_id), ()))

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
    def listen(self, namespace: str, flow_id: str) -> Iterator[Inbox]:
        key = (namespace, flow_id)
        inbox = Inbox()
        self._listeners.setdefault(key, set()).add(inbox)
        try:
            yield inbox
        finally:
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(inbox)
                if not listeners:
                    del self._listeners[key]
