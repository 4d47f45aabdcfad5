"""Retries, per-attempt timeouts and continue_on_error (decision 0010), over both backends."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import rfc8785

from engine_service.core.events import StepAttemptFailed, StepFailed
from engine_service.core.replay import replay_stored
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.context import StepContext, StepResult, failure, success
from engine_service.steps.registry import StepRegistry
from engine_service.steps.retry import RetryPolicy, StepDefaults
from flowledger.canonical import JsonValue, parse_json
from flowledger.errors import InvalidArgument
from flowledger_core.domain import FlowStatus
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import verify_independently

FAST = RetryPolicy(max_attempts=3, initial_interval_ms=10, backoff_multiplier=2.0)


def _oracle(value: JsonValue) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def seed(ctx: StepContext) -> StepResult:
    return success({"n": 2})


def double(ctx: StepContext) -> StepResult:
    return success(*({"n": int(p["n"]) * 2} for p in ctx.input_payloads))


def flaky(ctx: StepContext) -> StepResult:
    """Fails its first two attempts (deterministically: by attempt number)."""
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return double(ctx)


def broken(ctx: StepContext) -> StepResult:
    return failure("always broken", "Broken")


def count_inputs(ctx: StepContext) -> StepResult:
    return success({"inputs": len(ctx.inputs)})


def _flow(middle: object, **options: object) -> FlowDefinition:
    flow = Flow("retries").source("seed", seed).transform("middle", middle)  # type: ignore[arg-type]
    if options:
        flow = flow.options(**options)  # type: ignore[arg-type]
    return flow.sink("last", count_inputs).build()


async def _check_replay_and_verify(engine: Engine, run_state: object, run: object) -> None:
    events = await run.events()  # type: ignore[attr-defined]
    assert replay_stored([e.stored for e in events]) == run_state
    report = await engine.verify(run.namespace, run.flow_id)  # type: ignore[attr-defined]
    assert report.ok, report.divergence


async def test_fails_twice_then_succeeds_with_clean_fingerprints(
    engine: Engine, store: EventStore, ns: str
) -> None:
    run = await engine.start(_flow(flaky, retry=FAST), namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSRSRSFSFC"
    retried = [e.event for e in await run.events() if isinstance(e.event, StepAttemptFailed)]
    assert [(r.attempt, r.error_type, r.delay_ms) for r in retried] == [
        (1, "RuntimeError", 10),
        (2, "RuntimeError", 20),
    ]
    assert state.step("middle").attempt == 3  # type: ignore[union-attr]
    clean = await (await engine.start(_flow(double), namespace=ns)).run_to_end()
    assert state.step_fingerprints == clean.step_fingerprints
    assert state.flow_fingerprint == clean.flow_fingerprint
    assert await verify_independently(store, run) == list(clean.step_fingerprints)
    await _check_replay_and_verify(engine, state, run)


async def test_non_retryable_error_fails_at_once(engine: Engine, ns: str) -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval_ms=1, non_retryable=("RuntimeError",))
    run = await engine.start(_flow(flaky, retry=policy), namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert await run.event_variants() == "ISFSXE"
    await _check_replay_and_verify(engine, state, run)


async def test_max_attempts_reached_fails_the_step(
    engine: Engine, store: EventStore, ns: str
) -> None:
    policy = RetryPolicy(max_attempts=2, initial_interval_ms=1)
    run = await engine.start(_flow(broken, retry=policy), namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert await run.event_variants() == "ISFSRSXE"
    failed = [e.event for e in await run.events() if isinstance(e.event, StepFailed)]
    assert [(f.attempt, f.error_type, f.fingerprint) for f in failed] == [(2, "Broken", None)]
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.FAILED
    await _check_replay_and_verify(engine, state, run)


async def test_engine_defaults_apply_and_are_not_recorded(store: EventStore, ns: str) -> None:
    settings = EngineSettings(
        step_defaults=StepDefaults(RetryPolicy(max_attempts=3, initial_interval_ms=1))
    )
    engine = Engine(store, registry=StepRegistry(), settings=settings)
    run = await engine.start(_flow(flaky), namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSRSRSFSFC"
    init = parse_json((await run.events())[0].stored.payload_json)
    assert all(set(s) == {"id", "type", "kind", "config"} for s in init["steps"])


async def test_attempt_timeout_is_a_retried_failure(engine: Engine, ns: str) -> None:
    async def slow_first(ctx: StepContext) -> StepResult:
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        return success({"n": 1})

    policy = RetryPolicy(max_attempts=2, initial_interval_ms=1)
    run = await engine.start(_flow(slow_first, retry=policy, timeout_ms=50), namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSRSFSFC"
    retried = [e.event for e in await run.events() if isinstance(e.event, StepAttemptFailed)]
    assert [r.error_type for r in retried] == ["Timeout"]
    await _check_replay_and_verify(engine, state, run)


async def test_timeout_without_retries_fails_the_flow(engine: Engine, ns: str) -> None:
    async def slow(ctx: StepContext) -> StepResult:
        await asyncio.sleep(30)
        return success()

    run = await engine.start(_flow(slow, timeout_ms=50), namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert await run.event_variants() == "ISFSXE"
    assert state.step("middle").error_type == "Timeout"  # type: ignore[union-attr]


async def test_continue_on_error_completes_with_a_failure_fingerprint(
    engine: Engine, ns: str
) -> None:
    definition = _flow(broken, continue_on_error=True)
    run = await engine.start(definition, namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSXSFC"
    # The next step receives no inputs from the failed one.
    assert await run.last_step_output("last") == [{"inputs": 0}]
    events = [e.event for e in await run.events()]
    failed = next(e for e in events if isinstance(e, StepFailed))
    seed_outputs = state.steps[0].output_hashes
    expected = _oracle(
        {
            "engine_version": "flowledger-fp/1",
            "step_id": "middle",
            "inputs": sorted(seed_outputs),
            "params": {},
            "definition_hash": definition.definition_hash,
            "failed": {"error_type": "Broken"},
        }
    )
    assert failed.fingerprint == expected
    assert state.step_fingerprints[1] == expected
    assert state.flow_fingerprint == _oracle(list(state.step_fingerprints))
    again = await (await engine.start(definition, namespace=ns)).run_to_end()
    assert again.flow_fingerprint == state.flow_fingerprint
    await _check_replay_and_verify(engine, state, run)


async def test_continue_on_error_step_by_step(engine: Engine, ns: str) -> None:
    run = await engine.start(_flow(broken, continue_on_error=True), namespace=ns)
    while await run.next() is not None:
        pass
    assert await run.event_variants() == "ISFSXSFC"


def test_declarative_fields_validate_with_paths(registry: StepRegistry) -> None:
    document: dict[str, JsonValue] = {
        "name": "d",
        "defaults": {"retry": {"max_attempts": 3}, "timeout_ms": 1000},
        "steps": [
            {"id": "seed", "type": "chem.seed", "config": {"text": "Hola"}},
            {"id": "split", "type": "chem.split", "retry": {"max_attempts": 0}},
            {"id": "p", "type": "chem.print_and_count", "timeout_ms": 0},
        ],
    }
    with pytest.raises(InvalidArgument) as caught:
        FlowDefinition.from_dict(document, registry)
    fields = {v.field for v in caught.value.violations}
    assert {"steps[1].retry.max_attempts", "steps[2].timeout_ms"} <= fields
    document["steps"][1]["retry"] = {"max_attempts": 2}
    document["steps"][2] = {"id": "p", "type": "chem.print_and_count", "when": "a["}
    with pytest.raises(InvalidArgument) as caught:
        FlowDefinition.from_dict(document, registry)
    assert [v.field for v in caught.value.violations] == ["steps[2].when"]
    document["steps"][2] = {"id": "p", "type": "chem.print_and_count", "continue_on_error": True}
    definition = FlowDefinition.from_dict(document, registry)
    assert definition.steps[0].retry == RetryPolicy(max_attempts=3)
    assert definition.steps[1].retry == RetryPolicy(max_attempts=2)
    assert [s.timeout_ms for s in definition.steps] == [1000, 1000, 1000]
    assert definition.steps[2].continue_on_error
    assert FlowDefinition.from_dict(definition.to_dict(), registry) == definition


def test_builder_options_validate_with_paths() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Flow("b").source("seed", seed).transform("m", double).options(
            retry=RetryPolicy(max_attempts=0), timeout_ms=0
        ).build()
    fields = {v.field for v in caught.value.violations}
    assert fields == {"steps[1].retry.max_attempts", "steps[1].timeout_ms"}



@pytest.mark.parametrize(
    ("when", "variants", "last_inputs"),
    [
        ("input.go", "ISFSFSFC", 1),
        ("input.stop", "ISFZSFC", 0),
        ("results.seed[0].n == `2`", "ISFSFSFC", 1),
    ],
)
async def test_when_runs_or_skips_a_step(
    engine: Engine, ns: str, when: str, variants: str, last_inputs: int
) -> None:
    flow = Flow("cond").source("seed", seed).transform("middle", double).options(when=when)
    definition = flow.sink("last", count_inputs).build()
    run = await engine.start(definition, {"go": True}, namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == variants
    assert await run.last_step_output("last") == [{"inputs": last_inputs}]
    again = await (await engine.start(definition, {"go": True}, namespace=ns)).run_to_end()
    assert again.flow_fingerprint == state.flow_fingerprint
    await _check_replay_and_verify(engine, state, run)


async def test_skipped_step_fingerprint(engine: Engine, ns: str) -> None:
    flow = Flow("cond").source("seed", seed).transform("middle", double).options(when="input")
    definition = flow.sink("last", count_inputs).build()
    run = await engine.start(definition, None, namespace=ns)
    state = await run.run_to_end()
    assert await run.event_variants() == "ISFZSFC"
    assert state.step_fingerprints[1] == _oracle(
        {
            "engine_version": "flowledger-fp/1",
            "step_id": "middle",
            "inputs": sorted(state.steps[0].output_hashes),
            "params": {},
            "definition_hash": definition.definition_hash,
            "skipped": True,
        }
    )
    assert state.flow_fingerprint == _oracle(list(state.step_fingerprints))
    step_by_step = await engine.start(definition, None, namespace=ns)
    while await step_by_step.next() is not None:
        pass
    assert await step_by_step.event_variants() == "ISFZSFC"


async def test_when_that_fails_to_evaluate_fails_the_flow(engine: Engine, ns: str) -> None:
    flow = Flow("cond").source("seed", seed).transform("middle", double)
    definition = flow.options(when="length(input)").sink("last", count_inputs).build()
    run = await engine.start(definition, 5, namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert await run.event_variants() == "ISFSXE"
    assert state.step("middle").error_type == "ConditionError"  # type: ignore[union-attr]
    await _check_replay_and_verify(engine, state, run)


def test_invalid_when_is_refused_with_its_path(registry: StepRegistry) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Flow("b").source("seed", seed).options(when="input[").build()
    assert [v.field for v in caught.value.violations] == ["steps[0].when"]
