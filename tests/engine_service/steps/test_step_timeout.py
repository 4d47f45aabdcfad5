"""The step timeout: a bound on the whole step (every attempt and the backoffs between them),
recorded as a deadline on the first StepStarted, so that a replay or another engine applies the
same bound. Time is an injected clock; the step itself moves it on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.events import StepStarted
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry
from engine_service.steps.retry import RetryPolicy
from flowledger.errors import InvalidArgument
from flowledger_core.ports import EventStore

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def flaky_flow(step_timeout_ms: int, attempts: int = 10) -> FlowDefinition:
    return (
        Flow("deadline")
        .source("call", "t.flaky")
        .options(
            retry=RetryPolicy(max_attempts=attempts, initial_interval_ms=0, max_interval_ms=0),
            step_timeout_ms=step_timeout_ms,
        )
        .build()
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def flaky(clock: Clock) -> StepRegistry:
    registry = StepRegistry()

    @registry.step("t.flaky", kind=StepKind.SOURCE)
    def call(ctx: StepContext) -> StepResult:
        clock.now += timedelta(seconds=4)  # each attempt takes 4 s of the step's time
        if ctx.attempt < 3:
            return failure("busy", "Busy")
        return success({"attempt": ctx.attempt})

    return registry


async def test_a_step_timeout_stops_the_retries(
    store: EventStore, flaky: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = Engine(store, registry=flaky, settings=EngineSettings(clock=clock))
    run = await engine.run(flaky_flow(step_timeout_ms=6_000), None, namespace=ns)
    state = await run.state()
    assert state.failed
    assert state.steps[0].error_type == "StepTimeout"
    assert state.steps[0].attempt == 2  # attempt 2 ended past the 6 s: no attempt 3
    assert await run.event_variants() == "ISRSXE"
    first = (await run.events())[1].event
    assert isinstance(first, StepStarted)
    assert first.deadline == "2026-11-22T12:00:06.000Z"


async def test_within_its_step_timeout_the_step_retries_and_succeeds(
    store: EventStore, flaky: StepRegistry, clock: Clock, ns: str
) -> None:
    engine = Engine(store, registry=flaky, settings=EngineSettings(clock=clock))
    run = await engine.run(flaky_flow(step_timeout_ms=60_000), None, namespace=ns)
    assert (await run.state()).completed
    assert await run.last_step_output("call") == [{"attempt": 3}]


def test_a_bad_step_timeout_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        flaky_flow(step_timeout_ms=0)
    assert [v.field for v in refused.value.violations] == ["steps[0].step_timeout_ms"]
