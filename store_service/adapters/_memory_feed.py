"""The in-memory store's global feed: per namespace, every event in seq order, and Subscribe's
catch-up and live tail over it.

Writes hold the store's lock, so seq order is commit order here. The condition shares that lock:
a writer publishes and wakes the followers in one critical section.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable, Sequence

from flowledger_core.domain import EventType, FeedEvent, StoredEvent


class MemoryFeed:
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._changed = asyncio.Condition(lock)
        self._events: dict[str, list[StoredEvent]] = {}
        self._closed = False

    def publish(self, namespace: str, events: Sequence[StoredEvent]) -> None:
        """Add committed events and wake the followers; the caller holds the lock."""
        self._events.setdefault(namespace, []).extend(events)
        self._changed.notify_all()

    async def close(self) -> None:
        """Wake every follower to find the store closed."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def follow(
        self,
        namespace: str,
        after_seq: int,
        types: Sequence[EventType],
        chunk_size: int,
        check_open: Callable[[], None],
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        """The namespace's events after ``after_seq`` in chunks: catch-up, then live."""
        wanted = frozenset(types)
        async with self._lock:
            feed = self._events.setdefault(namespace, [])
            pos = bisect.bisect_right(feed, after_seq, key=lambda e: e.seq)
        while True:
            async with self._changed:
                while len(feed) <= pos and not self._closed:
                    await self._changed.wait()
                # A closing store ends its subscriptions as the Postgres one does: Unavailable,
                # so a client resubscribes elsewhere from its last cursor.
                check_open()
                batch: list[FeedEvent] = []
                while pos < len(feed) and len(batch) < chunk_size:
                    event = feed[pos]
                    pos += 1
                    if not wanted or event.type in wanted:
                        batch.append(FeedEvent(event, f"mem:{event.seq}"))
            # Yield outside the lock: a slow consumer must not block writers.
            if batch:
                yield batch
