"""Durable waits in the engine core (decision 0013), over both backends.

Time is an injected clock: a wait is shown to suspend the flow (WAITING in the store, with its
wake time), to stay suspended before its time and to fire after, with no sleeping. Signals,
cancels and commit steps are exercised through the same API the gRPC handlers use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.replay import StepStatus
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run import interventions
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.builtin import format_time
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.registry import StepRegistry
from flowledger.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from flowledger_core.domain import Append, AppendResult, FlowStatus
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


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
def steps() -> StepRegistry:
    registry = StepRegistry()

    @registry.step("t.start", kind=StepKind.SOURCE)
    def start(ctx: StepContext) -> StepResult:
        return success({"order": ctx.flow_input})

    @registry.step("t.use", kind=StepKind.TRANSFORM)
    def use(ctx: StepContext) -> StepResult:
        return success({"got": [a.payload for a in ctx.inputs]})

    @registry.step("t.undo", kind=StepKind.TRANSFORM)
    def undo(ctx: StepContext) -> StepResult:
        return success({"undone": True})

    return registry


def engine_of(store: EventStore, registry: StepRegistry, clock: Clock) -> Engine:
    return Engine(store, registry=registry, settings=EngineSettings(clock=clock, inline_wait_ms=0))


def waiting_flow() -> FlowDefinition:
    return (
        Flow("waits")
        .source("start", "t.start")
        .options(compensate="t.undo")
        .wait("pause", 30, reason="cool down")
        .transform("use", "t.use")
        .build()
    )


async def test_a_wait_suspends_the_flow_until_its_time(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(waiting_flow(), 5, namespace=ns)
    state = await run.run_to_end(wait_timers=False)
    assert not state.terminal
    assert run.suspension is not None
    assert run.suspension.until == T0 + timedelta(seconds=30)
    flow = await store.get_flow(ns, run.flow_id)
    assert flow.status is FlowStatus.WAITING
    assert await run.event_variants() == "ISFST"

    clock.advance(29)  # not yet: nothing is written
    await run.run_to_end(wait_timers=False)
    assert await run.event_variants() == "ISFST"

    clock.advance(1)
    state = await run.run_to_end(wait_timers=False)
    assert state.completed
    assert await run.event_variants() == "ISFSTWFSFC"
    # The wait passed its inputs through to the next step.
    assert await run.last_step_output("use") == [{"got": [{"order": 5}]}]
    assert state.steps[1].output_hashes == state.steps[0].output_hashes


async def test_a_waited_flow_has_the_fingerprint_of_any_other_run(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    first = await engine.start(waiting_flow(), 5, namespace=ns)
    await first.run_to_end(wait_timers=False)
    clock.advance(3600)
    await first.run_to_end()
    second = await engine.start(waiting_flow(), 5, namespace=ns)
    await second.run_to_end(wait_timers=False)
    clock.advance(30)
    await second.run_to_end(wait_timers=False)
    assert await first.flow_fingerprint() == await second.flow_fingerprint()
    assert (await engine.verify(ns, first.flow_id)).ok


def signal_flow(**options: object) -> FlowDefinition:
    return (
        Flow("approval")
        .source("start", "t.start")
        .signal("approve", "approved", **options)  # type: ignore[arg-type]
        .transform("use", "t.use")
        .build()
    )


async def test_a_signal_resumes_the_waiting_step_with_its_payload(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(signal_flow(), 1, namespace=ns)
    await run.run_to_end()
    assert run.suspension is not None
    assert run.suspension.until is None  # waits for the signal, with no deadline
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.WAITING

    result = await interventions.signal(run, "approved", {"by": "ana"}, request_id="r-1")
    assert result.resumed
    assert not result.duplicate
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.RUNNING
    state = await run.run_to_end()
    assert state.completed
    assert await run.last_step_output("approve") == [{"by": "ana"}]
    assert await run.event_variants() == "ISFSTNFSFC"
    again = await interventions.signal(run, "approved", {"by": "ana"}, request_id="r-1")
    assert again.duplicate  # a retry of a delivered signal, even after the flow ended


async def test_a_signal_sent_before_the_wait_is_not_lost(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(signal_flow(), 1, namespace=ns)
    early = await interventions.signal(run, "approved", "early")
    assert not early.resumed
    state = await run.run_to_end()
    assert state.completed
    assert await run.last_step_output("approve") == ["early"]
    assert state.signals == ()  # consumed
    assert await run.event_variants() == "INSFSFSFC"


async def test_signals_to_ended_flows_and_past_the_limit_are_refused(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(signal_flow(), 1, namespace=ns)
    await interventions.signal(run, "other", 1, max_pending=2)
    await interventions.signal(run, "other", 2, max_pending=2)
    version = (await run.state()).version
    with pytest.raises(ResourceExhausted) as limit:
        await interventions.signal(run, "other", 3, max_pending=2)
    assert limit.value.reason == "TOO_MANY_PENDING_SIGNALS"
    with pytest.raises(InvalidArgument):
        await interventions.signal(run, "bad name!", 3)
    assert (await run.state()).version == version  # refused calls wrote nothing
    await interventions.signal(run, "approved", "go")
    assert (await run.run_to_end()).completed
    with pytest.raises(FailedPrecondition) as ended:
        await interventions.signal(run, "approved", "late")
    assert ended.value.reason == "FLOW_ENDED"


async def test_a_signal_timeout_fails_or_defaults_the_step(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    failing = await engine.start(signal_flow(timeout_seconds=60), 1, namespace=ns)
    await failing.run_to_end(wait_timers=False)
    assert failing.suspension is not None
    assert failing.suspension.until == T0 + timedelta(seconds=60)
    clock.advance(60)
    state = await failing.run_to_end()
    assert state.failed
    assert state.steps[1].error_type == "SignalTimeout"
    assert await failing.event_variants() == "ISFSTWXE"

    defaulted = await engine.start(
        signal_flow(timeout_seconds=5, on_timeout="default", default={"approved": False}),
        2, namespace=ns,
    )  # fmt: skip
    await defaulted.run_to_end(wait_timers=False)
    clock.advance(5)
    await defaulted.run_to_end(wait_timers=False)
    assert (await defaulted.state()).completed
    assert await defaulted.last_step_output("approve") == [{"approved": False}]


async def test_cancel_during_a_wait_runs_compensations_and_ends_cancelled(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(waiting_flow(), 9, namespace=ns)
    await run.run_to_end(wait_timers=False)
    result = await interventions.cancel(run, reason="customer changed mind", requested_by="ops")
    assert not result.already
    state = await run.run_to_end()
    assert state.cancelled
    assert state.terminal
    assert state.steps[2].status is StepStatus.PENDING  # no further step ran
    assert await run.event_variants() == "ISFSTAYVK"
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.CANCELLED
    again = await interventions.cancel(run)
    assert again.already
    with pytest.raises(FailedPrecondition) as ended:
        await interventions.signal(run, "x", None)
    assert ended.value.reason == "FLOW_ENDED"


async def test_cancel_of_a_completed_flow_is_refused(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = engine_of(store, steps, clock)
    run = await engine.start(waiting_flow(), 9, namespace=ns)
    await run.run_to_end(wait_timers=False)
    clock.advance(30)
    assert (await run.run_to_end(wait_timers=False)).completed
    with pytest.raises(FailedPrecondition) as ended:
        await interventions.cancel(run)
    assert ended.value.reason == "FLOW_ENDED"


async def test_an_interrupted_commit_step_is_not_run_again(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    calls: list[int] = []

    @steps.step("t.pay", kind=StepKind.TRANSFORM)
    def pay(ctx: StepContext) -> StepResult:
        calls.append(ctx.attempt)
        return success({"paid": True})

    definition = (
        Flow("commit").source("start", "t.start").transform("pay", "t.pay").options(commit=True)
        .build()
    )  # fmt: skip
    engine = engine_of(store, steps, clock)
    run = await engine.start(definition, 1, namespace=ns)
    await run.next(start_next=True)  # start finished, pay started (by this run)
    # This run goes away; another engine finds the commit step started but not finished.
    other = await engine_of(store, steps, clock).attach(run.flow_id, namespace=ns)
    state = await other.run_to_end()
    assert calls == []  # never executed by the run that did not start it
    assert state.failed
    assert state.steps[1].error_type == "CommitInterrupted"


async def test_a_commit_step_runs_once_in_the_run_that_started_it(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    definition = (
        Flow("commit-ok").source("start", "t.start").transform("use", "t.use")
        .options(commit=True).build()
    )  # fmt: skip
    run = await engine_of(store, steps, clock).run(definition, 1, namespace=ns)
    assert (await run.state()).completed
    assert format_time(T0) == "2026-11-22T12:00:00.000Z"


async def test_a_signal_arriving_while_the_wait_is_being_recorded_is_not_missed(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str
) -> None:
    """The signal lands between the engine planning its TimerStarted and appending it: the
    append conflicts, and the wait is planned again from the re-read log (which now holds the
    signal) instead of being re-sent, which would leave the flow WAITING on a delivered signal."""
    raced: list[bool] = []

    async def signal_first(cmd: Append, inner: AppendFn) -> AppendResult:
        if cmd.command_id.endswith(":s1:a1:wait") and not raced:
            raced.append(True)
            other = await engine_of(store, steps, clock).attach(cmd.flow_id, namespace=ns)
            await interventions.signal(other, "approved", "raced")
        return await inner(cmd)

    engine = engine_of(DelegatingStore(store, signal_first), steps, clock)
    run = await engine.start(signal_flow(), 1, namespace=ns)
    state = await run.run_to_end()
    assert raced == [True]
    assert state.completed
    assert await run.last_step_output("approve") == ["raced"]
    assert await run.event_variants() == "ISFSNFSFC"


def _long_wait(**when: object) -> FlowDefinition:
    return (
        Flow("sleeps")
        .source("start", "t.start")
        .wait("sleep", **when)  # type: ignore[arg-type]
        .transform("use", "t.use")
        .build()
    )


@pytest.mark.parametrize(
    ("when", "after"),
    [
        ({"seconds": 31_536_000}, timedelta(days=365)),
        ({"duration": "30d"}, timedelta(days=30)),
        ({"duration": "1w2d3h4m5.5s"}, timedelta(days=9, hours=3, minutes=4, seconds=5.5)),
        ({"until": "2027-06-01T09:30:00+02:00"}, datetime(2027, 6, 1, 7, 30, tzinfo=UTC) - T0),
        ({"until": "2026-01-01T00:00:00Z"}, timedelta(0)),  # already past: fires at once
    ],
)
async def test_a_long_sleep_holds_nothing_and_wakes_at_its_time(
    store: EventStore, steps: StepRegistry, clock: Clock, ns: str, when: dict[str, object],
    after: timedelta,
) -> None:
    """Issue 19, long durable sleeps: up to a year, as seconds, a duration or until a time; the
    flow is WAITING in the store with that wake time, and completes once it comes."""
    engine = engine_of(store, steps, clock)
    run = await engine.start(_long_wait(**when), 5, namespace=ns)
    state = await run.run_to_end(wait_timers=False)
    if after > timedelta(0):
        assert run.suspension is not None
        assert run.suspension.until == T0 + after
        flow = await store.get_flow(ns, run.flow_id)
        assert flow.status is FlowStatus.WAITING
        assert flow.wake_at == T0 + after
        clock.advance(after.total_seconds() - 1)
        await run.run_to_end(wait_timers=False)
        assert await run.event_variants() == "ISFST"  # not yet
        clock.advance(1)
        state = await run.run_to_end(wait_timers=False)
    assert state.completed
    assert await run.last_step_output("use") == [{"got": [{"order": 5}]}]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "give exactly one of seconds, until or duration"),
        ({"seconds": 5, "duration": "5s"}, "(got seconds, duration)"),
        ({"seconds": 31_622_401}, "is greater than the maximum of 31622400"),
        ({"duration": "367d"}, "at most a year"),
        ({"duration": "5 days"}, "is not a duration like 30d"),
        ({"duration": "5s1m"}, "is not a duration like 30d"),
        ({"until": "2027-06-01"}, "is not an RFC 3339 time with an offset"),
        ({"until": "2027-06-01T09:30:00"}, "is not an RFC 3339 time with an offset"),
        ({"until": "2999-01-01T00:00:00Z"}, "is more than a year ahead"),
    ],
)
def test_a_wait_s_time_is_checked_before_anything_runs(
    steps: StepRegistry, config: dict[str, object], message: str
) -> None:
    document = {"name": "bad", "steps": [{"id": "w", "type": "wait", "config": config}]}
    with pytest.raises(InvalidArgument) as caught:
        FlowDefinition.from_dict(document, steps)
    assert message in str(caught.value) + " ".join(v.description for v in caught.value.violations)
