"""Builders and readers shared by the store parity suite (backend-agnostic)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from flowledger.canonical import canonical_bytes, content_hash, parse_json
from flowledger_core.domain import (
    Append,
    AppendResult,
    EventType,
    FeedEvent,
    Flow,
    FlowStatus,
    NewArtifact,
    NewEvent,
    NewFlow,
    StoredEvent,
)
from flowledger_core.ports import EventStore

_commands = itertools.count(1)


def command_id(prefix: str = "cmd") -> str:
    return f"{prefix}-{next(_commands)}-{uuid.uuid4().hex[:8]}"


def ev(type_: EventType = EventType.STEP_STARTED, **payload: Any) -> NewEvent:
    return NewEvent(type_, canonical_bytes(payload or {"n": 0}).decode())


def artifact(value: Any, event_index: int = 0, kind: str = "json") -> NewArtifact:
    text = canonical_bytes(value).decode()
    return NewArtifact(content_hash(value), kind, text, None, event_index)


async def new_flow(store: EventStore, ns: str, name: str = "f", **kw: Any) -> Flow:
    flow, existed = await store.create_flow(NewFlow(ns, name, **kw))
    assert not existed
    return flow


async def append(
    store: EventStore,
    ns: str,
    flow_id: str,
    expected: int,
    *events: NewEvent,
    artifacts: Sequence[NewArtifact] = (),
    cmd: str | None = None,
    status: FlowStatus | None = None,
) -> AppendResult:
    return await store.append(
        Append(
            ns,
            flow_id,
            expected,
            cmd or command_id(),
            tuple(events or [ev()]),
            tuple(artifacts),
            status,
        )
    )


async def read_all(
    store: EventStore, ns: str, flow_id: str, after: int = 0, to: int = 0, chunk: int = 1000
) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async for chunk_ in store.read_events(ns, flow_id, after, to, chunk):
        out.extend(chunk_)
    return out


def view(events: Sequence[StoredEvent]) -> list[tuple[int, str, str, Any]]:
    """What must agree across backends: versions, types, variants, parsed payloads."""
    return [(e.version, e.type.value, e.type.variant, parse_json(e.payload_json)) for e in events]


def flow_view(flow: Flow) -> dict[str, Any]:
    """A flow without its clock readings, metadata parsed (jsonb normalises the text)."""
    return {
        "flow_id": flow.flow_id,
        "namespace": flow.namespace,
        "name": flow.name,
        "status": flow.status,
        "metadata": parse_json(flow.metadata_json),
        "parent_flow_id": flow.parent_flow_id,
        "fork_version": flow.fork_version,
        "version": flow.version,
        "generation": flow.generation,
        "created_by": flow.created_by,
        "deleted": flow.deleted,
        "lease_token": flow.lease_token,
        "wake_at": flow.wake_at,
        "task_queue": flow.task_queue,
    }


def assert_contiguous(events: Sequence[StoredEvent], start: int = 1) -> None:
    assert [e.version for e in events] == list(range(start, start + len(events)))


async def aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


async def eventually(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Bounded wait for a condition nothing signals (e.g. a metric): fails on the deadline."""

    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - there is no event to wait on
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), within)


class Feed:
    """A subscription drained by a background task, so tests can wait for what arrived."""

    def __init__(self, it: AsyncIterator[Sequence[FeedEvent]]) -> None:
        self.it = it
        self.events: list[FeedEvent] = []
        self.seqs: set[int] = set()
        self._arrived = asyncio.Condition()
        self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        async for chunk in self.it:
            async with self._arrived:
                self.events.extend(chunk)
                self.seqs.update(f.event.seq for f in chunk)
                self._arrived.notify_all()

    async def wait_for_count(self, n: int, within: float = 30.0) -> list[FeedEvent]:
        """Bounded wait until at least n events arrived (fails the test on the deadline)."""

        async def reached() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.events) >= n or self._task.done())

        await asyncio.wait_for(reached(), within)
        if self._task.done() and self._task.exception() is not None:
            raise AssertionError("the subscription failed") from self._task.exception()
        assert len(self.events) >= n, f"the subscription ended after {len(self.events)} events"
        return list(self.events)

    async def wait_for_seq(self, seq: int, within: float = 30.0) -> list[FeedEvent]:
        async def reached() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: seq in self.seqs or self._task.done())

        await asyncio.wait_for(reached(), within)
        assert seq in self.seqs, "the subscription ended early"
        return list(self.events)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await aclose(self.it)
