"""The engine over both backends: golden fingerprints, determinism, idempotent start, replay
and snapshots, failures, signals and what a step sees."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from engine_service.core.events import StepFinished, StepSignal
from engine_service.core.replay import StepStatus, replay_stored
from engine_service.core.state_json import state_from_json, state_to_json
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.definitions.samples import chem_flow, hello_flow
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry, StepType
from flowledger.canonical import JsonValue
from flowledger.errors import AlreadyExists, InvalidArgument
from flowledger_core.domain import FlowFilter, FlowStatus, Page
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import verify_independently


@dataclass(frozen=True)
class Golden:
    definition: FlowDefinition
    input: JsonValue
    definition_hash: str
    steps: dict[str, str]
    flow: str
    last_output: list[JsonValue]


GOLDEN = {
    "chem": Golden(
        chem_flow(),
        None,
        "d5280a7821eac21594d64cd2dd5f891756bb869e672315ff51b7e6818b4ce974",
        {
            "seed": "9f473f47ffbac310a90668bbffd5d1eb94c15d42d4d0b8beeb378b6c025d5286",
            "split": "894c7acc62a244c67d04215a52ed325d8cb43425cb3d7c5d21903e2b847639fa",
            "print_and_count": "9a14ee104f337367c531be6a0265ad19cad6ff09e799e2b56929db4a69dbea67",
        },
        "980960dee41776624eb967ecea04ae82e09f4bc1d6e987b36fad993c9fde2c5d",
        [{"count": 4}],
    ),
    "hello": Golden(
        hello_flow(),
        None,
        "a369fd0d6b3f88704adeefb27c0a8c7867d086d0309cc87c100101e2d3eb33f3",
        {
            "greet": "392f74e497d1c75642da1939237761bcaa0364d5245b48a55a8e106e799e1087",
            "shout": "215fe21524125e34a1d01b580d8d05284fd769589eb415734c769831a62dffe3",
            "done": "5ec12cedab6b370c5f39669a470835887a45d59c99cecf43130e39900bd6dd5c",
        },
        "d5bb76eed149b83090f06813444a12f183a9aef5753b1c8511986145025fc624",
        [{"length": 12}],
    ),
    "hello-ana": Golden(
        hello_flow(),
        {"name": "ana"},
        "a369fd0d6b3f88704adeefb27c0a8c7867d086d0309cc87c100101e2d3eb33f3",
        {
            "greet": "fe0a32d190381df6162d697a675317b37d1e07325543e52176709b76d3413df3",
            "shout": "50e4f8068e99e0cd78b5620b346518601b4712641ae8c908abbe1d2190bf3d13",
            "done": "0f3587211292d4674f640ac39eea1f33aef57c6344015c1ba9e0f4a59bb4cc0e",
        },
        "cb21e09b5d53bc58972bc54038ba8aca7aac41c299cbdc9ad58367b630068df5",
        [{"length": 10}],
    ),
}


@pytest.mark.parametrize("name", GOLDEN)
async def test_golden_fingerprints(engine: Engine, store: EventStore, ns: str, name: str) -> None:
    golden = GOLDEN[name]
    run = await engine.start(golden.definition, golden.input, namespace=ns)
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSFSFC"
    assert golden.definition.definition_hash == golden.definition_hash
    assert {s.step_id: s.fingerprint for s in state.steps} == golden.steps
    assert await run.flow_fingerprint() == golden.flow
    last = golden.definition.steps[-1].id
    assert await run.last_step_output(last) == golden.last_output
    assert await verify_independently(store, run) == list(golden.steps.values())
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.COMPLETED


async def test_next_runs_one_step_at_a_time(engine: Engine, ns: str) -> None:
    run = await engine.start(chem_flow(), namespace=ns)
    assert await run.event_variants() == "I"
    assert await run.last_step_output("seed") is None
    step = await run.next()
    assert step is not None
    assert step.step_id == "seed"
    assert step.status is StepStatus.FINISHED_OK
    assert await run.event_variants() == "ISF"
    assert await run.last_step_output("seed") == [{"text": "Hola"}]
    assert await run.flow_fingerprint() is None
    await run.next()
    assert await run.last_step_output("split") == [
        {"index": i, "text": c} for i, c in enumerate("Hola")
    ]
    await run.next()
    assert await run.next() is None
    assert await run.event_variants() == "ISFSFSFC"
    with pytest.raises(InvalidArgument):
        await run.last_step_output("nope")


async def test_two_engines_on_two_stores_give_identical_logs(
    store: EventStore, memory_store: EventStore, registry: StepRegistry, ns: str
) -> None:
    first = await Engine(store, registry=registry).run(chem_flow(), {"x": 1}, namespace=ns)
    second = await Engine(memory_store, registry=registry).run(chem_flow(), {"x": 1}, namespace=ns)
    assert first.flow_id != second.flow_id

    def stripped(events: list[Any]) -> list[Any]:
        return [(e.version, e.event) for e in events]

    assert stripped(await first.events()) == stripped(await second.events())
    assert await first.flow_fingerprint() == await second.flow_fingerprint()


def _scaled_flow(factor: int, offset: int) -> FlowDefinition:
    def numbers(ctx: StepContext) -> StepResult:
        return success(*range(int(ctx.params["n"])))

    def scale(ctx: StepContext) -> StepResult:
        return success(*(int(x) * int(ctx.params["factor"]) for x in ctx.input_payloads))

    def shift(ctx: StepContext) -> StepResult:
        return success(*(int(x) + int(ctx.params["offset"]) for x in ctx.input_payloads))

    def total(ctx: StepContext) -> StepResult:
        return success(sum(int(x) for x in ctx.input_payloads))

    return (
        Flow("scaled")
        .source("numbers", numbers, n=3)
        .transform("scale", scale, factor=factor)
        .transform("shift", shift, offset=offset)
        .sink("total", total)
        .build()
    )


async def test_changing_params_changes_that_step_and_later_fingerprints_only(
    engine: Engine, ns: str
) -> None:
    base = await (await engine.run(_scaled_flow(2, 0), namespace=ns)).state()
    changed = await (await engine.run(_scaled_flow(3, 0), namespace=ns)).state()
    same = [a.fingerprint == b.fingerprint for a, b in zip(base.steps, changed.steps, strict=True)]
    assert same == [True, False, False, False]
    assert base.flow_fingerprint != changed.flow_fingerprint
    later = await (await engine.run(_scaled_flow(2, 5), namespace=ns)).state()
    same = [a.fingerprint == b.fingerprint for a, b in zip(base.steps, later.steps, strict=True)]
    assert same == [True, True, False, False]


async def test_different_inputs_or_variables_give_different_fingerprints(
    engine: Engine, ns: str
) -> None:
    plain = await engine.run(chem_flow(), None, namespace=ns)
    other_input = await engine.run(chem_flow(), {"run": 2}, namespace=ns)
    with_variables = await engine.run(chem_flow(), None, namespace=ns, variables={"env": "x"})
    prints = {
        await plain.flow_fingerprint(),
        await other_input.flow_fingerprint(),
        await with_variables.flow_fingerprint(),
    }
    assert len(prints) == 3


async def test_reordered_steps_record_another_definition_hash(engine: Engine, ns: str) -> None:
    a = Flow("r").source("a", "chem.seed", text="x").transform("b", "chem.split")
    b = Flow("r").source("b", "chem.seed", text="x").transform("a", "chem.split")
    run_a = await engine.run(a.build(), namespace=ns)
    run_b = await engine.run(b.build(), namespace=ns)
    state_a, state_b = await run_a.state(), await run_b.state()
    assert state_a.init is not None
    assert state_b.init is not None
    assert state_a.init.definition_hash != state_b.init.definition_hash


async def test_idempotent_start(engine: Engine, store: EventStore, ns: str) -> None:
    first = await engine.start(chem_flow(), {"n": 1}, namespace=ns, idempotency_key="order-1")
    again = await engine.start(chem_flow(), {"n": 1}, namespace=ns, idempotency_key="order-1")
    assert again.flow_id == first.flow_id
    assert await first.event_variants() == "I"  # nothing started twice
    await again.run_to_end()
    after = await engine.start(chem_flow(), {"n": 1}, namespace=ns, idempotency_key="order-1")
    assert after.flow_id == first.flow_id
    assert await after.event_variants() == "ISFSFSFC"
    assert (await after.state()).completed
    with pytest.raises(AlreadyExists) as exc:
        await engine.start(chem_flow(), {"n": 2}, namespace=ns, idempotency_key="order-1")
    assert exc.value.reason == "IDEMPOTENCY_KEY_REUSED"
    other_ns = await engine.start(
        chem_flow(), {"n": 1}, namespace=ns + "-b", idempotency_key="order-1"
    )
    assert other_ns.flow_id != first.flow_id
    page = await store.list_flows(FlowFilter(ns), Page())
    assert [f.flow_id for f in page.flows] == [first.flow_id]


async def test_invalid_start_writes_nothing(engine: Engine, store: EventStore, ns: str) -> None:
    bad_config = Flow("x").source("s", "chem.seed", text=3).build()
    with pytest.raises(InvalidArgument) as exc:
        await engine.start(bad_config, namespace=ns)
    assert [v.field for v in exc.value.violations] == ["steps[0].config.text"]
    unknown = Flow("x").source("s", "no.such.type").build()
    with pytest.raises(InvalidArgument):
        await engine.start(unknown, namespace=ns)
    with pytest.raises(InvalidArgument) as exc:
        await engine.start(chem_flow(), {"x": float("nan")}, namespace=ns)
    assert exc.value.violations[0].field == "input"
    with pytest.raises(InvalidArgument) as exc:
        await engine.start(chem_flow(), {"x": "nul \x00"}, namespace=ns)
    assert exc.value.violations[0].field == "input"
    assert (await store.list_flows(FlowFilter(ns), Page())).flows == ()


async def test_live_state_equals_replay_and_snapshot_plus_tail(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry, settings=EngineSettings(snapshot_every=3))
    run = await engine.run(chem_flow(), namespace=ns)
    live = run.current_state
    assert live is not None
    events = [e.stored for e in await run.events()]
    full = replay_stored(events)
    assert full == live
    snapshot = await store.load_snapshot(ns, run.flow_id)
    assert snapshot is not None
    assert 3 <= snapshot.version < live.version
    from_snapshot = replay_stored(
        [e for e in events if e.version > snapshot.version],
        state_from_json(snapshot.state_json),
    )
    assert from_snapshot == full
    for version in range(len(events) + 1):  # every cut point, not only the saved one
        head = state_from_json(state_to_json(replay_stored(events[:version])))
        assert replay_stored(events[version:], head) == full
    # A fresh engine loads snapshot + tail and sees the same state.
    attached = await Engine(store, registry=registry).attach(run.flow_id, namespace=ns)
    assert await attached.state() == live


async def test_a_failing_step_fails_the_flow(engine: Engine, store: EventStore, ns: str) -> None:
    def explode(ctx: StepContext) -> StepResult:
        raise ValueError("no parts today")

    definition = Flow("boom").source("seed", "chem.seed", text="x").transform("explode", explode)
    run = await engine.start(definition.sink("never", "chem.print_and_count").build(), namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert not state.completed
    assert await run.event_variants() == "ISFSXE"
    assert state.steps[1].status is StepStatus.FAILED
    assert state.steps[1].reason == "no parts today"
    assert state.steps[1].error_type == "ValueError"
    assert state.steps[2].status is StepStatus.PENDING
    assert await run.flow_fingerprint() is None
    assert await run.next() is None
    assert (await store.get_flow(ns, run.flow_id)).status is FlowStatus.FAILED


@pytest.mark.parametrize(
    ("result", "error_type"),
    [
        (failure("bad input", "BadInput"), "BadInput"),
        ({"not": "a result"}, "InvalidResult"),
        (success(float("inf")), "InvalidOutput"),
        (success("nul \x00"), "InvalidOutput"),
        (success(signals=[("", 1)]), "InvalidOutput"),
    ],
)
async def test_bad_results_are_recorded_failures(
    engine: Engine, ns: str, result: object, error_type: str
) -> None:
    def step(ctx: StepContext) -> Any:
        return result

    run = await engine.run(Flow("bad").source("s", step).build(), namespace=ns)
    state = await run.state()
    assert state.failed
    assert state.steps[0].error_type == error_type


async def test_signals_and_the_step_context(engine: Engine, ns: str) -> None:
    seen: dict[str, Any] = {}

    async def source(ctx: StepContext) -> StepResult:
        await asyncio.sleep(0)
        return success({"a": 1}, {"b": 2}, signals=[("progress", {"pct": 50})])

    def middle(ctx: StepContext) -> StepResult:
        return success({"c": len(ctx.inputs)})

    def sink(ctx: StepContext) -> StepResult:
        seen.update(
            inputs=ctx.input_payloads,
            results={k: [a.payload for a in v] for k, v in ctx.results.items()},
            flow_input=ctx.flow_input,
            variables=dict(ctx.variables),
            params=dict(ctx.params),
            key=ctx.idempotency_key,
        )
        return success()

    definition = (
        Flow("ctx").source("src", source).transform("mid", middle).sink("out", sink, k="v").build()
    )
    run = await engine.run(definition, {"in": 1}, namespace=ns, variables={"env": "test"})
    assert await run.event_variants() == "ISGFSFSFC"
    events = [e.event for e in await run.events()]
    assert StepSignal("src", 0, "progress", {"pct": 50}) in events
    assert seen == {
        "inputs": [{"c": 2}],
        "results": {"src": [{"a": 1}, {"b": 2}], "mid": [{"c": 2}]},
        "flow_input": {"in": 1},
        "variables": {"env": "test"},
        "params": {"k": "v"},
        "key": f"{run.flow_id}:out:1",
    }
    finished = [e for e in events if isinstance(e, StepFinished)]
    assert finished[-1].output_hashes == ()


async def test_threaded_sync_steps(store: EventStore, registry: StepRegistry, ns: str) -> None:
    reg = registry.child()
    threads: list[str] = []

    def blocking(ctx: StepContext) -> StepResult:
        threads.append(threading.current_thread().name)
        return success({"ok": True})

    reg.register(StepType("t.blocking", StepKind.SOURCE, blocking, threaded=True))
    run = await Engine(store, registry=reg).run(
        Flow("t").source("b", "t.blocking").build(), namespace=ns
    )
    assert (await run.state()).completed
    assert threads
    assert threads[0] != threading.main_thread().name
