"""The Python SDK's TaskWorker against real services (store over each backend, an engine
replica, gRPC on loopback): completion, failures as FailTask, heartbeats, graceful stop.

Separate worker processes, lease takeovers and retries at the call level are in
test_semantics_grpc.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowledger.client import FlowledgerClient
from flowledger.types import EventType, FlowStatus, JsonValue
from flowledger.worker import Task, TaskClient, TaskWorker, outputs_of
from tests.engine_service.api.conftest import BOUND_S, Stack, published


def task_document(queue: str, **options: Any) -> dict[str, Any]:
    return {
        "steps": [
            {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
            {"id": "work", "type": "task", "config": {"queue": queue}, **options},
            {"id": "done", "type": "hello.done"},
        ]
    }


async def start(
    client: FlowledgerClient, ns: str, name: str, *inputs: Any, **options: Any
) -> list[str]:
    await published(client, ns, name, task_document(f"q-{ns}", **options))
    return [(await client.start_flow(ns, name, i)).flow_id for i in inputs]


def worker(stack: Stack, ns: str, handler: Any, **options: Any) -> TaskWorker:
    settings: dict[str, Any] = {"lease_ms": 5000, "poll_wait_ms": 200, **options}
    return TaskWorker(stack.engine.address, ns, [f"q-{ns}"], handler, **settings)


async def shout(task: Task) -> list[JsonValue]:
    message = task.inputs[0]["message"]
    return [{"message": message.upper()}]


async def test_an_async_handler_completes_tasks(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    flows = await start(client, ns, "shouted", {"name": "ana"}, {"name": "bo"})
    async with worker(stack, ns, shout, concurrency=2) as running:
        views = [await client.wait_for_flow(ns, f, within=BOUND_S) for f in flows]
    assert [v.status for v in views] == [FlowStatus.COMPLETED] * 2
    assert (running.completed, running.failed, running.lost) == (2, 0, 0)
    for view, name in zip(views, ("ANA", "BO"), strict=True):
        work = view.step("work")
        assert work is not None
        (artifact,) = (await client.fetch_artifacts(ns, work.output_hashes)).found
        assert artifact.payload == {"message": f"HELLO, {name}"}
        assert view.variants == "ISFSQFSFC"


async def test_a_sync_handler_s_exception_fails_the_task_with_its_class_name(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    seen: list[Task] = []

    def refuse(task: Task) -> JsonValue:
        seen.append(task)
        raise ValueError("bad size")

    retry = {"max_attempts": 3, "initial_interval_ms": 10, "non_retryable": ["ValueError"]}
    (flow_id,) = await start(client, ns, "refused", None, retry=retry)
    async with worker(stack, ns, refuse) as running:
        view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.FAILED
    assert (running.completed, running.failed) == (0, 1)
    assert [t.attempt for t in seen] == [1]  # non-retryable: no second attempt
    assert seen[0].params == {"queue": f"q-{ns}"}
    events = [e async for u in client.watch_flow(ns, flow_id) for e in u.events]
    failed = next(e for e in events if e.type is EventType.STEP_FAILED)
    assert (failed.payload["error_type"], failed.payload["reason"]) == ("ValueError", "bad size")


async def test_heartbeats_keep_the_lease_of_a_long_task(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    (flow_id,) = await start(client, ns, "long", None)
    lease_ms = 1000
    async with TaskClient(stack.engine.address, timeout=BOUND_S) as other:

        async def slow(task: Task) -> list[JsonValue]:
            # Another worker polls for longer than two leases: it gets the task only if this
            # worker's heartbeats stopped renewing the lease.
            taken = await other.poll(ns, [f"q-{ns}"], "thief", wait_ms=2 * lease_ms + 500)
            return [{"message": "taken over" if taken else "kept"}]

        async with worker(stack, ns, slow, lease_ms=lease_ms) as running:
            view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert (running.completed, running.lost) == (1, 0)
    work = view.step("work")
    assert work is not None
    (artifact,) = (await client.fetch_artifacts(ns, work.output_hashes)).found
    assert artifact.payload == {"message": "kept"}


async def test_stop_lets_the_running_task_finish_and_report(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    (flow_id,) = await start(client, ns, "graceful", None)
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(task: Task) -> list[JsonValue]:
        entered.set()
        await release.wait()
        return [{"message": "finished after stop"}]

    running = worker(stack, ns, held)
    async with running:
        async with asyncio.timeout(BOUND_S):
            await entered.wait()
        running.stop()
        release.set()
        async with asyncio.timeout(BOUND_S):
            await running.stopped()
    assert running.completed == 1
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED


async def test_an_idle_worker_stops_within_its_poll_wait(stack: Stack, ns: str) -> None:
    running = worker(stack, ns, shout, poll_wait_ms=100)
    async with running:
        pass  # exiting the block stops it; the open poll is answered within 100 ms
    assert (running.completed, running.failed, running.lost) == (0, 0, 0)


def test_outputs_of_a_handler_s_return_value() -> None:
    assert outputs_of([1, 2]) == [1, 2]
    assert outputs_of((1,)) == [1]
    assert outputs_of({"a": 1}) == [{"a": 1}]
    assert outputs_of(None) == [None]


def test_bad_worker_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lease_ms"):
        TaskWorker("127.0.0.1:1", "ns", ["q"], shout, lease_ms=10)
    with pytest.raises(ValueError, match="concurrency"):
        TaskWorker("127.0.0.1:1", "ns", ["q"], shout, concurrency=0)


async def test_a_task_whose_flow_was_cancelled_is_dropped_and_the_worker_goes_on(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    first, second = await start(client, ns, "cancelled", {"name": "a"}, {"name": "b"})
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(task: Task) -> list[JsonValue]:
        if task.flow_id == first:
            entered.set()
            await release.wait()
        return await shout(task)

    async with worker(stack, ns, handler, concurrency=2) as running:
        async with asyncio.timeout(BOUND_S):
            await entered.wait()
        await client.cancel_flow(ns, first, reason="no longer needed")
        release.set()
        cancelled = await client.wait_for_flow(ns, first, within=BOUND_S)
        completed = await client.wait_for_flow(ns, second, within=BOUND_S)
    assert cancelled.status is FlowStatus.CANCELLED
    assert completed.status is FlowStatus.COMPLETED
    assert (running.completed, running.lost) == (1, 1)
