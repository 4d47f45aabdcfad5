"""Issue 4's workflow semantics through the real services: durable waits, signals, cancel with
compensation, and external task workers, over a store process on Postgres and engine processes.

Definitions are created and published through the EngineService API and use the sample step
types (``hello.*``) and the engine's own ``wait``, ``signal`` and ``task`` steps. Every wait on
the flow is bounded (WatchFlow or DescribeFlow until a condition holds, ``BOUND_S`` at most);
wait steps last 2 s and leases 1 s so that the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flowledger.client import FlowledgerClient
from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger.types import EventType, FlowStatus, FlowView, StepStatus
from flowledger.worker import TaskClient
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import BOUND_S
from tests.engine_service.api.processes import (
    REPO,
    ServiceProcess,
    engine_env,
    service_process,
    store_env,
)
from tests.fixtures.postgres import PgServer, fresh_database
from tests.fixtures.store_server import wait_until

WAIT_S = 2  # above the engine's inline wait (1 s): the flow lets go of its lease while it waits


def doc(*steps: Mapping[str, Any]) -> dict[str, Any]:
    return {"steps": [dict(s) for s in steps]}


GREET = {"id": "greet", "type": "hello.greet", "config": {"name": "world"}}
SHOUT = {"id": "shout", "type": "hello.shout"}
DONE = {"id": "done", "type": "hello.done"}
PAUSE = {"id": "pause", "type": "wait", "config": {"seconds": WAIT_S, "reason": "cool down"}}
APPROVE = {"id": "approve", "type": "signal", "config": {"name": "approved"}}


def task_step(queue: str, **options: Any) -> dict[str, Any]:
    return {"id": "work", "type": "task", "config": {"queue": queue}, **options}


# -- services ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def store(
    pg_server: PgServer, migrated_template: str
) -> AsyncIterator[ServiceProcess]:
    with fresh_database(pg_server, template=migrated_template) as url:
        async with service_process("store_service", store_env(url, 0)) as proc:
            yield proc


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gate directory of the module's engine (tests.engine_service.api.gate_steps)."""
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
async def engine(store: ServiceProcess, gates: Path) -> AsyncIterator[ServiceProcess]:
    env = engine_env(store.address, gates)
    async with service_process("engine_service", env) as proc:
        await wait_until(proc.serving, "the engine to serve", BOUND_S)
        yield proc


@pytest.fixture
async def client(engine: ServiceProcess) -> AsyncIterator[FlowledgerClient]:
    async with FlowledgerClient(engine.address, timeout=BOUND_S) as sdk:
        yield sdk


@pytest.fixture
async def tasks(engine: ServiceProcess) -> AsyncIterator[TaskClient]:
    async with TaskClient(engine.address, timeout=BOUND_S) as sdk:
        yield sdk


async def start(
    client: FlowledgerClient, ns: str, name: str, document: Mapping[str, Any], flow_input: Any
) -> str:
    created = await client.create_definition(ns, name, document)
    await client.publish_definition(ns, name, created.version.version)
    return (await client.start_flow(ns, name, flow_input)).flow_id


async def until_status(
    client: FlowledgerClient, ns: str, flow_id: str, status: FlowStatus
) -> FlowView:
    """DescribeFlow until the flow has ``status`` (bounded; failing at once if it ended)."""
    async with asyncio.timeout(BOUND_S):
        while True:
            view = await client.describe_flow(ns, flow_id)
            if view.status is status:
                return view
            assert not view.status.terminal, f"flow ended {view.status} before {status}"
            await asyncio.sleep(0.02)


async def outputs(client: FlowledgerClient, ns: str, view: FlowView, step_id: str) -> list[Any]:
    step = view.step(step_id)
    assert step is not None
    found = (await client.fetch_artifacts(ns, step.output_hashes)).by_hash()
    return [found[h].payload for h in step.output_hashes]


async def event_types(client: FlowledgerClient, ns: str, flow_id: str) -> list[EventType]:
    view = await client.describe_flow(ns, flow_id)
    seen: list[EventType] = []
    async with asyncio.timeout(BOUND_S):
        async for update in client.watch_flow(ns, flow_id):
            seen += [e.type for e in update.events]
            if len(seen) >= view.flow.version:
                break
    return seen


# -- (a) durable wait ----------------------------------------------------------------------------


async def test_a_wait_step_waits_then_completes_untouched(
    client: FlowledgerClient, ns: str
) -> None:
    flow_id = await start(client, ns, "pause", doc(GREET, PAUSE, SHOUT), {"name": "ana"})
    waiting = await until_status(client, ns, flow_id, FlowStatus.WAITING)
    assert waiting.status is FlowStatus.WAITING
    pause = waiting.step("pause")
    assert pause is not None
    assert pause.status is StepStatus.WAITING  # a durable wait, not a running function
    assert pause.wait is not None
    assert (pause.wait.signal_name, pause.wait.task_queue) == ("", "")
    assert pause.wait.until is not None
    assert waiting.variants.endswith("ST")  # pause started, its timer recorded

    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.variants == "ISFSTWFSFC"
    # The wait passed greet's outputs through to shout.
    assert await outputs(client, ns, view, "pause") == [{"message": "hello, ana"}]
    assert await outputs(client, ns, view, "shout") == [{"message": "HELLO, ANA"}]
    assert (await client.verify_flow(ns, flow_id)).ok


async def test_watch_reports_the_flow_waiting_once_it_waits(
    client: FlowledgerClient, engine: ServiceProcess, gates: Path, ns: str
) -> None:
    gate = f"g-{ns}"
    gated = doc(GREET, {"id": "gate", "type": gate_steps.GATE_TYPE, "config": {"name": gate}},
                APPROVE)  # fmt: skip
    flow_id = await start(client, ns, "watched", gated, None)
    await wait_until(lambda: engine.pid in gate_steps.entered(gates, gate), "the gate", BOUND_S)
    statuses: list[tuple[str, FlowStatus]] = []
    async with asyncio.timeout(BOUND_S):
        async for update in client.watch_flow(ns, flow_id):  # from a RUNNING flow
            if not statuses:
                (gates / f"{gate}.open").touch()
            statuses.append(("".join(e.variant for e in update.events), update.status))
            if update.events[-1].type is EventType.TIMER_STARTED:
                break
    await client.signal_flow(ns, flow_id, "approved")  # let it end
    assert statuses[-1][1] is FlowStatus.WAITING, statuses


# -- (b) engine restarts during waits -----------------------------------------------------------


async def test_flows_waiting_on_a_killed_engine_finish_on_a_new_one(
    pg_server: PgServer, migrated_template: str, ns: str, tmp_path: Path
) -> None:
    # Own store and engines: the module's engine must not take these flows over.
    with fresh_database(pg_server, template=migrated_template) as url:
        async with service_process("store_service", store_env(url, 0)) as own_store:
            env = engine_env(own_store.address, tmp_path)
            async with service_process("engine_service", env) as first:
                await wait_until(first.serving, "the first engine", BOUND_S)
                async with FlowledgerClient(first.address, timeout=BOUND_S) as client:
                    timed = await start(client, ns, "timed", doc(GREET, PAUSE, DONE), None)
                    signalled = await start(client, ns, "signalled", doc(GREET, APPROVE, DONE),
                                            None)  # fmt: skip
                    for flow_id in (timed, signalled):
                        await until_status(client, ns, flow_id, FlowStatus.WAITING)
                first.signal(signal.SIGKILL)
                assert await first.wait(BOUND_S) == -signal.SIGKILL

            async with service_process("engine_service", env) as second:
                await wait_until(second.serving, "the second engine", BOUND_S)
                async with FlowledgerClient(second.address, timeout=BOUND_S) as client:
                    sent = await client.signal_flow(
                        ns, signalled, "approved", {"message": "ok by ana"}, request_id="b-1"
                    )
                    assert sent.resumed
                    assert not sent.duplicate
                    for flow_id, variants in ((timed, "ISFSTWFSFC"), (signalled, "ISFSTNFSFC")):
                        view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
                        assert view.status is FlowStatus.COMPLETED, flow_id
                        assert view.variants == variants
                    done = await client.describe_flow(ns, signalled)
                    assert await outputs(client, ns, done, "approve") == [{"message": "ok by ana"}]
                    assert await outputs(client, ns, done, "done") == [{"length": 9}]


# -- (c), (d) signals ----------------------------------------------------------------------------


async def test_a_signal_sent_before_the_wait_is_consumed_by_it(
    client: FlowledgerClient, ns: str
) -> None:
    flow_id = await start(client, ns, "early", doc(GREET, PAUSE, APPROVE), None)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)  # on pause, not yet on approve
    sent = await client.signal_flow(ns, flow_id, "approved", {"by": "ana"}, sent_by="test")
    assert not sent.resumed  # nobody waited for it yet
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    # approve started and finished at once (no TimerStarted of its own): the signal was kept.
    assert view.variants == "ISFSTNWFSFC"
    assert await outputs(client, ns, view, "approve") == [{"by": "ana"}]
    assert (await client.verify_flow(ns, flow_id)).ok


async def test_a_flow_whose_signal_step_consumed_a_signal_verifies(
    client: FlowledgerClient, ns: str
) -> None:
    """VerifyFlow recomputes the signal step's inputs as the run hashed them: what it received
    and the payload it consumed (it once reported every such flow diverged)."""
    flow_id = await start(client, ns, "verified", doc(GREET, APPROVE, DONE), None)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)
    await client.signal_flow(ns, flow_id, "approved", {"message": "ok"})
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    report = await client.verify_flow(ns, flow_id)
    assert report.ok, report.divergence
    assert report.events_checked == view.flow.version


async def test_signals_to_ended_or_unknown_flows_and_bad_signals_are_refused(
    client: FlowledgerClient, ns: str
) -> None:
    flow_id = await start(client, ns, "ends", doc(GREET, APPROVE), None)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)
    first = await client.signal_flow(ns, flow_id, "approved", "yes", request_id="d-1")
    assert first.resumed
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    before = await event_types(client, ns, flow_id)

    with pytest.raises(FailedPrecondition) as ended:
        await client.signal_flow(ns, flow_id, "approved", "again")
    assert ended.value.reason == "FLOW_ENDED"
    assert ended.value.metadata["status"] == "completed"
    # A retry of the delivered signal is answered as a duplicate, even now.
    retry = await client.signal_flow(ns, flow_id, "approved", "yes", request_id="d-1")
    assert retry.duplicate
    assert not retry.resumed
    assert (await client.describe_flow(ns, flow_id)).flow.version == view.flow.version
    assert await event_types(client, ns, flow_id) == before  # nothing was written

    with pytest.raises(FailedPrecondition) as cancel_ended:
        await client.cancel_flow(ns, flow_id)
    assert cancel_ended.value.reason == "FLOW_ENDED"
    with pytest.raises(InvalidArgument) as bad:
        await client.signal_flow(ns, flow_id, "no spaces allowed")
    assert [v.field for v in bad.value.violations] == ["name"]
    with pytest.raises(NotFound):
        await client.signal_flow(ns, "00000000-0000-4000-8000-000000000000", "approved")


# -- (e) cancel ----------------------------------------------------------------------------------


async def test_cancel_during_a_wait_compensates_and_ends_cancelled(
    client: FlowledgerClient, ns: str
) -> None:
    greet = {**GREET, "compensate": {"type": "hello.shout"}}
    long_pause = {**PAUSE, "config": {"seconds": 600}}
    flow_id = await start(client, ns, "cancelled", doc(greet, long_pause, DONE), {"name": "li"})
    await until_status(client, ns, flow_id, FlowStatus.WAITING)

    result = await client.cancel_flow(ns, flow_id, reason="changed mind", cancelled_by="ops")
    assert not result.already
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.CANCELLED
    # cancel requested (A), greet compensated (Y V), cancelled (K); done never started.
    assert view.variants == "ISFSTAYVK"
    step = view.step("done")
    assert step is not None
    assert step.status is StepStatus.PENDING
    events = [e async for u in client.watch_flow(ns, flow_id) for e in u.events]
    requested = next(e for e in events if e.type is EventType.FLOW_CANCEL_REQUESTED)
    assert requested.payload["reason"] == "changed mind"
    compensated = next(e for e in events if e.type is EventType.COMPENSATION_FINISHED)
    undo = (await client.fetch_artifacts(ns, compensated.payload["output_hashes"])).found
    assert [a.payload for a in undo] == [{"message": "HELLO, LI"}]  # shout ran on greet's output

    again = await client.cancel_flow(ns, flow_id)
    assert again.already
    with pytest.raises(FailedPrecondition) as ended:
        await client.signal_flow(ns, flow_id, "approved")
    assert ended.value.reason == "FLOW_ENDED"
    assert ended.value.metadata["status"] == "cancelled"


# -- (f), (g), (h) external task workers --------------------------------------------------------

WORKER_SCRIPT = """
import asyncio, os, sys
from flowledger.worker import Task, TaskWorker

address, namespace, queue = sys.argv[1:4]

async def main() -> None:
    async def shout(task: Task) -> list[object]:
        worker.stop()  # one task, then exit (the task is still completed: a graceful stop)
        message = task.inputs[0]["message"]
        return [{"message": message.upper(), "pid": os.getpid(), "attempt": task.attempt}]

    worker = TaskWorker(address, namespace, [queue], shout, worker_id="script", lease_ms=5000,
                        poll_wait_ms=500)
    await worker.run()
    print(f"completed={worker.completed} failed={worker.failed} lost={worker.lost}")

asyncio.run(main())
"""


async def test_a_worker_process_completes_a_task(
    client: FlowledgerClient, engine: ServiceProcess, ns: str
) -> None:
    queue = f"q-{ns}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER_SCRIPT, engine.address, ns, queue, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        flow_id = await start(client, ns, "tasked", doc(GREET, task_step(queue), DONE),
                              {"name": "bo"})  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), BOUND_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["completed=1", "failed=0", "lost=0"]
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.variants == "ISFSQFSFC"  # Q: the task scheduled on its queue
    (work,) = await outputs(client, ns, view, "work")
    assert work["message"] == "HELLO, BO"
    assert work["pid"] == proc.pid != os.getpid()
    assert await outputs(client, ns, view, "done") == [{"length": 9}]
    assert (await client.verify_flow(ns, flow_id)).ok


async def test_an_abandoned_task_is_taken_over_after_its_lease(
    client: FlowledgerClient, tasks: TaskClient, ns: str
) -> None:
    queue = f"q-{ns}"
    flow_id = await start(client, ns, "abandoned", doc(GREET, task_step(queue)), None)
    first = await tasks.poll(ns, [queue], "w1", lease_ms=1000, wait_ms=int(BOUND_S * 1000))
    assert first is not None
    assert (first.flow_id, first.step_id, first.attempt) == (flow_id, "work", 1)
    assert first.inputs == [{"message": "hello, world"}]
    assert first.idempotency_key == f"{flow_id}:work:1"
    # w1 never heartbeats: once its lease has expired, w2's poll gets the same task.
    second = await tasks.poll(ns, [queue], "w2", lease_ms=30_000, wait_ms=int(BOUND_S * 1000))
    assert second is not None
    assert second.task_id == first.task_id
    assert second.lease_token > first.lease_token

    with pytest.raises(FailedPrecondition) as early:  # w2 holds it now
        await tasks.heartbeat(first, "w1", 1000)
    assert early.value.reason == "LEASE_LOST"
    assert not await tasks.complete(second, [{"by": "w2"}])
    with pytest.raises(FailedPrecondition) as late:
        await tasks.complete(first, [{"by": "w1"}])
    assert late.value.reason == "LEASE_LOST"
    assert await tasks.complete(second, [{"by": "w2"}])  # the same completion: a duplicate

    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert await outputs(client, ns, view, "work") == [{"by": "w2"}]
    assert view.variants == "ISFSQFC"


async def test_a_failed_task_is_retried_as_a_new_attempt(
    client: FlowledgerClient, tasks: TaskClient, ns: str
) -> None:
    queue = f"q-{ns}"
    retry = {"max_attempts": 2, "initial_interval_ms": 100}
    flow_id = await start(client, ns, "flaky", doc(GREET, task_step(queue, retry=retry)), None)
    wait_ms = int(BOUND_S * 1000)
    first = await tasks.poll(ns, [queue], "w1", lease_ms=5000, wait_ms=wait_ms)
    assert first is not None
    assert first.attempt == 1
    assert await tasks.fail(first, "printer on fire", "Flaky")  # will retry
    second = await tasks.poll(ns, [queue], "w1", lease_ms=5000, wait_ms=wait_ms)
    assert second is not None
    assert (second.step_id, second.attempt) == ("work", 2)
    assert second.task_id != first.task_id
    assert second.idempotency_key == f"{flow_id}:work:2"
    assert not await tasks.complete(second, ["fixed"])

    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    work = view.step("work")
    assert work is not None
    assert work.attempts == 2
    types = await event_types(client, ns, flow_id)
    failed = [t for t in types if t is EventType.STEP_ATTEMPT_FAILED]
    assert len(failed) == 1
    assert await outputs(client, ns, view, "work") == ["fixed"]


async def test_a_task_failing_for_good_fails_the_flow(
    client: FlowledgerClient, tasks: TaskClient, ns: str
) -> None:
    queue = f"q-{ns}"
    flow_id = await start(client, ns, "broken", doc(GREET, task_step(queue)), None)
    task = await tasks.poll(ns, [queue], "w1", lease_ms=5000, wait_ms=int(BOUND_S * 1000))
    assert task is not None
    assert not await tasks.fail(task, "no such printer", "NoPrinter")
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.FAILED
    events = [e async for u in client.watch_flow(ns, flow_id) for e in u.events]
    failed = next(e for e in events if e.type is EventType.STEP_FAILED)
    assert (failed.payload["error_type"], failed.payload["reason"]) == (
        "NoPrinter", "no such printer"
    )
    assert json.loads(task.params_json) == {"queue": queue}


async def test_a_cancel_while_a_worker_holds_the_task_refuses_its_report(
    client: FlowledgerClient, tasks: TaskClient, ns: str
) -> None:
    queue = f"q-{ns}"
    greet = {**GREET, "compensate": {"type": "hello.shout"}}
    flow_id = await start(client, ns, "cancel-task", doc(greet, task_step(queue)), None)
    task = await tasks.poll(ns, [queue], "w1", lease_ms=30_000, wait_ms=int(BOUND_S * 1000))
    assert task is not None
    assert not (await client.cancel_flow(ns, flow_id, reason="stop")).already
    with pytest.raises(FailedPrecondition) as refused:
        await tasks.complete(task, ["too late"])
    assert refused.value.reason == "TASK_NOT_PENDING"
    # The refused worker's lease is let go: the compensations run now, not after its lease.
    view = await client.wait_for_flow(ns, flow_id, within=10)
    assert view.status is FlowStatus.CANCELLED
    assert view.variants == "ISFSQAYVK"


async def test_describe_says_what_a_step_waits_for_and_which_one_a_cancel_stopped(
    client: FlowledgerClient, ns: str
) -> None:
    """DescribeFlow's step statuses (every client's): WAITING with what for, CANCELLED for the
    step a cancel interrupted; they once all said RUNNING."""
    approve = {**APPROVE, "config": {"name": "approved", "timeout_seconds": 3600}}
    signalled = await start(client, ns, "asks", doc(GREET, approve, DONE), None)
    queued = await start(client, ns, "hands", doc(GREET, task_step(f"q-{ns}")), None)
    for flow_id in (signalled, queued):
        await until_status(client, ns, flow_id, FlowStatus.WAITING)
    view = await client.describe_flow(ns, signalled)
    step = view.step("approve")
    assert step is not None
    assert step.status is StepStatus.WAITING
    assert step.wait is not None
    assert (step.wait.signal_name, step.wait.task_queue) == ("approved", "")
    assert step.wait.until is not None
    assert view.flow.created_at is not None
    assert step.wait.until > view.flow.created_at
    assert [s.status for s in view.steps] == [
        StepStatus.FINISHED_OK, StepStatus.WAITING, StepStatus.PENDING
    ]
    work = (await client.describe_flow(ns, queued)).step("work")
    assert work is not None
    assert work.wait is not None
    assert (work.status, work.wait.signal_name, work.wait.task_queue, work.wait.until) == (
        StepStatus.WAITING, "", f"q-{ns}", None
    )

    await client.cancel_flow(ns, signalled, reason="no longer needed")
    cancelled = await client.wait_for_flow(ns, signalled, within=BOUND_S)
    assert cancelled.status is FlowStatus.CANCELLED
    assert [s.status for s in cancelled.steps] == [
        StepStatus.FINISHED_OK, StepStatus.CANCELLED, StepStatus.PENDING
    ]
    assert all(s.wait is None for s in cancelled.steps)
    await client.cancel_flow(ns, queued)


# -- timeouts of waits ---------------------------------------------------------------------------


async def test_a_signal_timeout_outputs_the_default(client: FlowledgerClient, ns: str) -> None:
    approve = {**APPROVE, "config": {"name": "approved", "timeout_seconds": WAIT_S,
                                     "on_timeout": "default", "default": {"message": "auto"}}}
    flow_id = await start(client, ns, "defaulted", doc(GREET, approve, DONE), None)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.variants == "ISFSTWFSFC"
    assert await outputs(client, ns, view, "approve") == [{"message": "auto"}]


async def test_a_task_no_worker_takes_times_out(client: FlowledgerClient, ns: str) -> None:
    work = task_step(f"q-{ns}")
    work["config"]["timeout_seconds"] = WAIT_S
    flow_id = await start(client, ns, "unserved", doc(GREET, work), None)
    await until_status(client, ns, flow_id, FlowStatus.WAITING)
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.FAILED
    assert view.variants == "ISFSQWXE"
    events = [e async for u in client.watch_flow(ns, flow_id) for e in u.events]
    failed = next(e for e in events if e.type is EventType.STEP_FAILED)
    assert failed.payload["error_type"] == "Timeout"
