"""The local logs WatchFlow serves without reading the store: what this replica appended to the
flows it created, kept in a bounded LRU (see :mod:`engine_service.api.watch` for why it is exact).

A log starts when an append of version 1 (a flow's FlowInitialized) is recorded, grows while
each recorded append continues it exactly (its first version is the last one + 1), and is
dropped at the first append that does not (a gap: something was appended that this replica did
not record) or that would make it longer than ``events_per_flow``. Appends to a flow without a
log are ignored: a log never starts in the middle.

Memory stays bounded whatever the load: at most ``flows`` logs and about ``bytes`` of events in
all; the least recently recorded or read log goes first. A flow this replica is running is
recorded every few milliseconds, so in practice what goes first is the ended flows (and flows
that wait for a long time). There is no other notion of "running here": a log evicted, dropped
or never started only costs its watchers the store reads they made before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from flowledger.errors import InvalidArgument
from flowledger_core.domain import StoredEvent

# What one kept event costs beyond its payload and command id (the StoredEvent object, its
# timestamp, ids): an estimate, the budget is approximate.
EVENT_OVERHEAD_BYTES = 256


@dataclass(frozen=True)
class LocalLogLimits:
    # Flows whose log is kept (0: none, every watch reads the store).
    flows: int = 4096
    # A longer log is dropped: its watchers read the store (a long flow's run costs far more).
    events_per_flow: int = 1000
    # Payloads, command ids and :data:`EVENT_OVERHEAD_BYTES` per event, summed over all logs.
    bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.flows < 0:
            raise InvalidArgument.field("flows", "must be >= 0")
        if self.events_per_flow < 1:
            raise InvalidArgument.field("events_per_flow", "must be >= 1")
        if self.bytes < 0:
            raise InvalidArgument.field("bytes", "must be >= 0")


@dataclass(eq=False)
class _Log:
    events: list[StoredEvent] = field(default_factory=list)
    size: int = 0


class LocalLogs:
    """Gapless logs from version 1, keyed by (namespace, flow id). Not thread-safe: used from
    the event loop only."""

    def __init__(self, limits: LocalLogLimits | None = None) -> None:
        self._limits = limits or LocalLogLimits()
        self._logs: OrderedDict[tuple[str, str], _Log] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._logs)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def record(self, key: tuple[str, str], events: Sequence[StoredEvent]) -> None:
        """The events of one append the store applied, in version order."""
        if not events:
            return
        first = events[0].version
        log = self._logs.get(key)
        if first == 1:
            # A flow's very first append (or the first after a prune cut its whole log):
            # whatever was kept before is not its log any more.
            if log is not None:
                self._drop(key, log)
            log = self._logs[key] = _Log()
        elif log is None:
            return
        elif first != log.events[-1].version + 1:
            self._drop(key, log)
            return
        if not _gapless(events) or len(log.events) + len(events) > self._limits.events_per_flow:
            self._drop(key, log)
            return
        added = sum(_size(e) for e in events)
        log.events.extend(events)
        log.size += added
        self._bytes += added
        self._logs.move_to_end(key)
        self._evict()

    def get(self, key: tuple[str, str]) -> tuple[StoredEvent, ...] | None:
        """The flow's kept log (versions 1..k, gapless), or None."""
        log = self._logs.get(key)
        if log is None:
            return None
        self._logs.move_to_end(key)
        return tuple(log.events)

    def _drop(self, key: tuple[str, str], log: _Log) -> None:
        del self._logs[key]
        self._bytes -= log.size

    def _evict(self) -> None:
        limits = self._limits
        while self._logs and (len(self._logs) > limits.flows or self._bytes > limits.bytes):
            _, oldest = self._logs.popitem(last=False)
            self._bytes -= oldest.size


def _gapless(events: Sequence[StoredEvent]) -> bool:
    return all(b.version == a.version + 1 for a, b in pairwise(events))


def _size(event: StoredEvent) -> int:
    return len(event.payload_json) + len(event.command_id) + EVENT_OVERHEAD_BYTES
