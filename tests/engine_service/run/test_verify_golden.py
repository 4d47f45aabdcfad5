"""Golden verifications, one per step kind and path, over both backends: every built-in step type
(``wait``, ``signal``, ``task``, ``http``, ``field_update``), branches, compensations, retries,
continued failures and skips. Each case runs a real flow, then verify must say *verified* (the
recomputation follows exactly what the run hashed) and the independent oracle agrees; then a copy
of the log with one event of the step under test tampered with must say *diverged* at it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine_service.core.event_codec import encode
from engine_service.core.events import (
    EngineEvent,
    FlowInitialized,
    StepFailed,
    StepFinished,
    StepSkipped,
)
from engine_service.definitions.builder import Flow
from engine_service.fingerprint import ENGINE_VERSION, step_fingerprint
from engine_service.run import interventions, tasks
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.run.flow_run import FlowRun
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.retry import RetryPolicy
from engine_service.steps.runners import install
from flowledger_core.domain import Append, FlowStatus, NewFlow
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import verify_independently
from tests.engine_service.steps.runners_server import LOOPBACK, Answer, ScriptedServer, server

__all__ = ["server"]  # the fixture

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BAD = "0" * 64


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry() -> AsyncIterator[StepRegistry]:
    registry = StepRegistry()
    install(registry, LOOPBACK)  # http, field_update, allowed to call the loopback server
    flaky_calls: dict[str, int] = {}

    def start(ctx: StepContext) -> StepResult:
        return success({"order": ctx.flow_input})

    def use(ctx: StepContext) -> StepResult:
        return success({"got": [a.payload for a in ctx.inputs]})

    def undo(ctx: StepContext) -> StepResult:
        return success({"undone": ctx.step_id})

    def flaky(ctx: StepContext) -> StepResult:
        flaky_calls[ctx.flow_id] = flaky_calls.get(ctx.flow_id, 0) + 1
        if flaky_calls[ctx.flow_id] == 1:
            return failure("not yet", "Busy")
        return success({"attempt": ctx.attempt})

    def boom(ctx: StepContext) -> StepResult:
        return failure("no", "Boom")

    for name, kind, fn in (
        ("t.start", StepKind.SOURCE, start),
        ("t.use", StepKind.TRANSFORM, use),
        ("t.undo", StepKind.TRANSFORM, undo),
        ("t.flaky", StepKind.TRANSFORM, flaky),
        ("t.boom", StepKind.TRANSFORM, boom),
    ):
        registry.register(StepType(name, kind, fn))
    yield registry
    await registry.aclose()


@pytest.fixture
def engine(store: EventStore, registry: StepRegistry, clock: Clock) -> Engine:
    settings = EngineSettings(clock=clock, inline_wait_ms=0, snapshot_every=3)
    return Engine(store, registry=registry, settings=settings)


Case = Callable[[Engine, str, Clock, ScriptedServer], Awaitable[FlowRun]]


async def _wait(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = Flow("w").source("start", "t.start").wait("pause", 30).transform("use", "t.use")
    run = await engine.start(flow.build(), 5, namespace=ns)
    await run.run_to_end(wait_timers=False)
    clock.advance(30)
    await run.run_to_end(wait_timers=False)
    return run


def _approval() -> Flow:
    return Flow("s").source("start", "t.start").signal("approve", "approved")


async def _signal(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    run = await engine.start(_approval().transform("use", "t.use").build(), 1, namespace=ns)
    await run.run_to_end()
    assert run.suspension is not None  # the step waits for its signal
    await interventions.signal(run, "approved", {"by": "ana"}, request_id="r-1")
    await run.run_to_end()
    return run


async def _signal_early(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    run = await engine.start(_approval().transform("use", "t.use").build(), 1, namespace=ns)
    await interventions.signal(run, "approved", "early")  # before the step waits
    await run.run_to_end()
    return run


async def _signal_first(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    """The first step is the signal step, in a flow with variables: its inputs are the flow
    input, the variables and the payload."""
    flow = Flow("s1").signal("approve", "approved").transform("use", "t.use")
    run = await engine.start(flow.build(), 1, namespace=ns, variables={"v": 1})
    await interventions.signal(run, "approved", [1, 2])
    await run.run_to_end()
    return run


async def _signal_default(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = (
        Flow("sd")
        .source("start", "t.start")
        .signal("approve", "approved", timeout_seconds=5, on_timeout="default", default=False)
        .transform("use", "t.use")
    )
    run = await engine.start(flow.build(), 1, namespace=ns)
    await run.run_to_end(wait_timers=False)
    clock.advance(5)
    await run.run_to_end(wait_timers=False)
    return run


async def _task(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = Flow("k").source("start", "t.start").task("work", "q").transform("use", "t.use")
    run = await engine.start(flow.build(), 3, namespace=ns)
    await run.run_to_end()
    leased = await tasks.poll(engine, ns, ("q",), "w-1", 30_000, 0)
    assert leased is not None
    await tasks.complete(engine, ns, run.flow_id, leased.task_id, leased.lease_token,
                         ('{"done": true}',))  # fmt: skip
    run = await engine.attach(run.flow_id, namespace=ns)  # the worker's report moved it on
    await run.run_to_end()
    return run


async def _http(engine: Engine, ns: str, clock: Clock, http: ScriptedServer) -> FlowRun:
    http.script(Answer(200, {"order": 7}))
    flow = Flow("h").source("start", "t.start").transform("call", "http", url=f"{http.url}/o")
    return await engine.run(flow.build(), 1, namespace=ns)


async def _field_update(engine: Engine, ns: str, clock: Clock, http: ScriptedServer) -> FlowRun:
    http.script(Answer(204, ""))
    flow = Flow("f").source("start", "t.start").sink(
        "update", "field_update", url=f"{http.url}/hook", record_id="r-1",
        fields={"n": "{{ inputs[0].order }}"},
    )  # fmt: skip
    return await engine.run(flow.build(), 2, namespace=ns)


async def _branch(engine: Engine, ns: str, clock: Clock, http: ScriptedServer) -> FlowRun:
    """A branch of a signalled flow: the prefix holds the consumed signal."""
    parent = await _signal(engine, ns, clock, http)
    branch = await engine.branch(ns, parent.flow_id, "use", {"use": {"again": True}})
    await branch.run_to_end()
    return branch


async def _compensated(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = (
        Flow("c")
        .source("start", "t.start").options(compensate="t.undo")
        .signal("approve", "approved").options(compensate="t.undo")
        .transform("boom", "t.boom")
    )  # fmt: skip
    run = await engine.start(flow.build(), 1, namespace=ns)
    await interventions.signal(run, "approved", "yes")
    await run.run_to_end()
    return run


async def _cancelled(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = (
        Flow("x")
        .source("start", "t.start").options(compensate="t.undo")
        .wait("pause", 30)
    )  # fmt: skip
    run = await engine.start(flow.build(), 1, namespace=ns)
    await run.run_to_end(wait_timers=False)
    await interventions.cancel(run, reason="changed mind")
    await run.run_to_end()
    return run


async def _retried(engine: Engine, ns: str, clock: Clock, _: ScriptedServer) -> FlowRun:
    flow = (
        Flow("r")
        .source("start", "t.start")
        .transform("flaky", "t.flaky").options(
            retry=RetryPolicy(max_attempts=3, initial_interval_ms=1)
        )
        .transform("use", "t.use")
    )  # fmt: skip
    return await engine.run(flow.build(), 1, namespace=ns)


async def _continued_and_skipped(
    engine: Engine, ns: str, clock: Clock, _: ScriptedServer
) -> FlowRun:
    flow = (
        Flow("cs")
        .source("start", "t.start")
        .transform("boom", "t.boom").options(continue_on_error=True)
        .transform("maybe", "t.use").options(when="input == `0`")
        .transform("use", "t.use")
    )  # fmt: skip
    return await engine.run(flow.build(), 1, namespace=ns)


# (case, the status it ends with, the step whose event is tampered with, the event's type)
CASES: dict[str, tuple[Case, FlowStatus, str, type[EngineEvent]]] = {
    "wait": (_wait, FlowStatus.COMPLETED, "pause", StepFinished),
    "signal": (_signal, FlowStatus.COMPLETED, "approve", StepFinished),
    "signal-before-wait": (_signal_early, FlowStatus.COMPLETED, "approve", StepFinished),
    "signal-first-step": (_signal_first, FlowStatus.COMPLETED, "approve", StepFinished),
    "signal-default": (_signal_default, FlowStatus.COMPLETED, "approve", StepFinished),
    "task": (_task, FlowStatus.COMPLETED, "work", StepFinished),
    "http": (_http, FlowStatus.COMPLETED, "call", StepFinished),
    "field_update": (_field_update, FlowStatus.COMPLETED, "update", StepFinished),
    "branch": (_branch, FlowStatus.COMPLETED, "use", StepFinished),
    "compensation": (_compensated, FlowStatus.FAILED, "approve", StepFinished),
    "cancel": (_cancelled, FlowStatus.CANCELLED, "start", StepFinished),
    "retry": (_retried, FlowStatus.COMPLETED, "flaky", StepFinished),
    "continue_on_error": (_continued_and_skipped, FlowStatus.COMPLETED, "boom", StepFailed),
    "skip": (_continued_and_skipped, FlowStatus.COMPLETED, "maybe", StepSkipped),
}


async def _forged(store: EventStore, ns: str, events: list[EngineEvent]) -> str:
    """A new flow whose log is ``events``."""
    assert isinstance(events[0], FlowInitialized)
    flow, _ = await store.create_flow(NewFlow(ns, "forged"))
    for position, event in enumerate(events):
        await store.append(
            Append(ns, flow.flow_id, position, f"forged-{position}", (encode(event),))
        )
    return flow.flow_id


@pytest.mark.parametrize("name", list(CASES))
async def test_a_real_run_verifies_and_a_tampered_copy_diverges(
    engine: Engine, store: EventStore, server: ScriptedServer, clock: Clock, ns: str, name: str
) -> None:
    case, status, step_id, event_type = CASES[name]
    run = await case(engine, ns, clock, server)
    assert (await store.get_flow(ns, run.flow_id)).status is status
    report = await engine.verify(ns, run.flow_id)
    assert report.ok, report.divergence
    assert report.divergence is None
    if status is FlowStatus.COMPLETED and event_type is StepFinished:
        await verify_independently(store, run)  # (the oracle knows only finished steps)

    logged = await run.events()
    events = [e.event for e in logged]
    [(position, target)] = [
        (i, e) for i, e in enumerate(events)
        if isinstance(e, event_type) and getattr(e, "step_id", None) == step_id
    ]  # fmt: skip
    forged: Any = target
    events[position] = dataclasses.replace(forged, fingerprint=BAD)
    report = await engine.verify(ns, await _forged(store, ns, events))
    assert not report.ok
    assert report.divergence is not None
    assert (report.divergence.version, report.divergence.step_id, report.divergence.kind) == (
        logged[position].version,
        step_id,
        "step_fingerprint",
    )


@pytest.mark.parametrize("name", ["signal", "signal-first-step", "branch"])
async def test_a_signal_steps_inputs_must_hold_the_consumed_payload(
    engine: Engine, store: EventStore, server: ScriptedServer, clock: Clock, ns: str, name: str
) -> None:
    """A log whose signal step forgot the payload among its inputs (and fingerprinted what it
    did record) is not what a run writes: diverged, though its fingerprint is self-consistent."""
    run = await CASES[name][0](engine, ns, clock, server)
    logged = await run.events()
    events = [e.event for e in logged]
    init = events[0]
    assert isinstance(init, FlowInitialized)
    [(position, finished)] = [
        (i, e) for i, e in enumerate(events)
        if isinstance(e, StepFinished) and e.step_id == "approve"
    ]  # fmt: skip
    assert finished.input_hashes[-1] == finished.output_hashes[0]  # the payload, recorded
    without = finished.input_hashes[:-1]
    events[position] = dataclasses.replace(
        finished,
        input_hashes=without,
        fingerprint=step_fingerprint(
            step_id="approve", input_hashes=without, params=init.steps[finished.index].params,
            definition_hash=init.definition_hash, engine_version=ENGINE_VERSION,
        ),
    )  # fmt: skip
    report = await engine.verify(ns, await _forged(store, ns, events))
    assert report.divergence is not None
    assert (report.divergence.version, report.divergence.step_id, report.divergence.kind) == (
        logged[position].version,
        "approve",
        "step_fingerprint",
    )
    assert report.divergence.recomputed == ",".join(finished.input_hashes)
