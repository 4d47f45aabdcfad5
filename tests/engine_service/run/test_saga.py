"""Saga compensation (decision 0014): seed flux's order saga, over both backends.

validate → reserve (compensated by release) → charge (compensated by refund) → ship; the
payment fails, so the reservation is released (charge never finished, so it is not refunded).
Each compensation is recorded, retried under the step's policy, and replayed.
"""

from __future__ import annotations

from collections import Counter

from engine_service.core.replay import CompensationStatus, StepStatus
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry
from engine_service.steps.retry import RetryPolicy
from flowledger.canonical import JsonValue
from flowledger_core.ports import EventStore

ORDER: JsonValue = {"order": 7, "sku": "tea", "amount": 12}


class Ledger:
    """What the fake outside world saw, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.counts: Counter[str] = Counter()
        self.fail_release_times = 0

    def registry(self) -> StepRegistry:
        registry = StepRegistry()
        kinds = {"validate": "source"}

        def make(name: str) -> None:
            kind = StepKind(kinds.get(name, "transform"))

            @registry.step(f"shop.{name}", kind=kind)
            def step(ctx: StepContext) -> StepResult:
                self.counts[name] += 1
                self.calls.append(f"{name}:{ctx.phase or 'run'}")
                if name == "charge":
                    return failure("card declined", "PaymentDeclined")
                if name == "release" and self.counts[name] <= self.fail_release_times:
                    raise ConnectionError("warehouse unreachable")
                inputs = [a.payload for a in ctx.inputs]
                return success({"step": name, "saw": inputs})

        for name in ("validate", "reserve", "release", "charge", "refund", "ship"):
            make(name)
        return registry


def order_saga(retry: RetryPolicy | None = None) -> FlowDefinition:
    return (
        Flow("order-saga")
        .source("validate", "shop.validate")
        .transform("reserve", "shop.reserve")
        .options(compensate="shop.release", compensate_params={"why": "saga"}, retry=retry)
        .transform("charge", "shop.charge")
        .options(compensate="shop.refund")
        .transform("ship", "shop.ship")
        .build()
    )


async def test_payment_fails_and_the_reservation_is_released(store: EventStore, ns: str) -> None:
    ledger = Ledger()
    engine = Engine(store, registry=ledger.registry())
    run = await engine.run(order_saga(), ORDER, namespace=ns)
    state = await run.state()
    assert state.failed
    assert not state.completed
    # validate, reserve ran; charge failed; only reserve is undone (charge never finished).
    assert ledger.calls == ["validate:run", "reserve:run", "charge:run", "release:compensate"]
    assert await run.event_variants() == "ISFSFSXYVE"
    assert state.steps[1].compensation is CompensationStatus.DONE
    assert state.steps[2].status is StepStatus.FAILED
    # The compensation received the reserved step's outputs as its inputs.
    events = await run.events()
    finished = [e.event for e in events if e.variant == "V"]
    assert len(finished) == 1
    (output,) = await run.planner.payloads(finished[0].output_hashes)  # type: ignore[union-attr]
    assert output == {"step": "release", "saw": [{"step": "reserve", "saw": [
        {"step": "validate", "saw": [ORDER]}]}]}  # fmt: skip


async def test_compensations_run_in_reverse_order(store: EventStore, ns: str) -> None:
    ledger = Ledger()
    registry = ledger.registry()

    @registry.step("shop.fail", kind=StepKind.TRANSFORM)
    def fail_late(ctx: StepContext) -> StepResult:
        ledger.calls.append("fail:run")
        return failure("boom")

    definition = (
        Flow("reverse")
        .source("validate", "shop.validate")
        .options(compensate="shop.refund")
        .transform("reserve", "shop.reserve")
        .options(compensate="shop.release")
        .transform("ship", "shop.ship")
        .transform("late", "shop.fail")
        .build()
    )
    run = await Engine(store, registry=registry).run(definition, ORDER, namespace=ns)
    assert ledger.calls[-3:] == ["fail:run", "release:compensate", "refund:compensate"]
    assert await run.event_variants() == "ISFSFSFSXYVYVE"


async def test_a_failing_compensation_is_retried_and_recorded(store: EventStore, ns: str) -> None:
    ledger = Ledger()
    ledger.fail_release_times = 2
    retry = RetryPolicy(max_attempts=3, initial_interval_ms=1, max_interval_ms=1)
    run = await Engine(store, registry=ledger.registry()).run(
        order_saga(retry), ORDER, namespace=ns
    )
    assert ledger.counts["release"] == 3
    assert await run.event_variants() == "ISFSFSXYUYUYVE"
    assert (await run.state()).steps[1].compensation is CompensationStatus.DONE


async def test_a_compensation_failing_for_good_does_not_stop_the_others(
    store: EventStore, ns: str
) -> None:
    ledger = Ledger()
    ledger.fail_release_times = 99
    registry = ledger.registry()
    definition = (
        Flow("partial")
        .source("validate", "shop.validate")
        .options(compensate="shop.refund")
        .transform("reserve", "shop.reserve")
        .options(compensate="shop.release")
        .transform("charge", "shop.charge")
        .build()
    )
    run = await Engine(store, registry=registry).run(definition, ORDER, namespace=ns)
    state = await run.state()
    assert state.failed
    assert state.steps[1].compensation is CompensationStatus.FAILED
    assert state.steps[0].compensation is CompensationStatus.DONE
    assert await run.event_variants() == "ISFSFSXYUYVE"


async def test_replay_of_a_compensated_flow_gives_the_live_state(
    store: EventStore, ns: str
) -> None:
    ledger = Ledger()
    engine = Engine(store, registry=ledger.registry())
    run = await engine.run(order_saga(), ORDER, namespace=ns)
    live = run.current_state
    again = await engine.attach(run.flow_id, namespace=ns)
    assert again.current_state == live
    assert (await engine.verify(ns, run.flow_id)).ok
