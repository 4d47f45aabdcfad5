"""Branching over both backends: copy-on-write reuse of the parent's prefix, params overrides
recorded as PropertyPreferenceAssigned, fingerprints equal to a fresh run's (golden), bad input
writing nothing, idempotency, branches of branches and of failed flows."""

from __future__ import annotations

from collections import Counter

import pytest

from engine_service.core.events import PropertyPreferenceAssigned, StepFinished
from engine_service.core.ids import flow_id_for_key
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition, StepSpec
from engine_service.definitions.samples import chem_flow, hello_flow
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepKind, StepResult, failure, success
from engine_service.steps.registry import StepRegistry, StepType
from flowledger.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from flowledger_core.domain import Append, AppendResult, FlowFilter, FlowStatus, Page
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore, verify_independently
from tests.engine_service.run.test_engine import GOLDEN

# A fresh run of hello_flow("ana") (input null) and of chem_flow("Adios"): what a branch of the
# default flows with those params must reproduce exactly.
HELLO_ANA = {
    "greet": "b96cd97a3eccb1d5e8893a508150295af7cb4b8be9b65f1497c353fd714e9276",
    "shout": "50e4f8068e99e0cd78b5620b346518601b4712641ae8c908abbe1d2190bf3d13",
    "done": "0f3587211292d4674f640ac39eea1f33aef57c6344015c1ba9e0f4a59bb4cc0e",
}
HELLO_ANA_FLOW = "746c3e0aadaeabf263f02f18246f1476617a237e100d2b0573c162f33f96781c"
CHEM_ADIOS = {
    "seed": "65335c119333c62b4237e6b6f65b27a9d4a48f7541c4f7d7e34b846ad54f442b",
    "split": "8a8e19b9f352e071d4744b69af74698860a9dc90e48805cb15b9970acb036d17",
    "print_and_count": "425ab8728c3579b50b5028bb2cad140bedddb58d28cca196f4b5d375ceba3ecc",
}
CHEM_ADIOS_FLOW = "cfd393c2901a4d9a1e6de20e1e3bce94444aea07ae5703259c5d3d4ced4d14e9"


def _numbers(ctx: StepContext) -> StepResult:
    return success(*range(int(ctx.params["n"])))


def _scale(ctx: StepContext) -> StepResult:
    if ctx.params.get("fail"):
        return failure("asked to fail", "Asked")
    return success(*(int(x) * int(ctx.params["factor"]) for x in ctx.input_payloads))


def _total(ctx: StepContext) -> StepResult:
    return success(sum(int(x) for x in ctx.input_payloads))


@pytest.fixture
def scaled_registry(registry: StepRegistry) -> StepRegistry:
    child = registry.child()
    child.register(StepType("t.numbers", StepKind.SOURCE, _numbers, {"type": "object"}))
    child.register(
        StepType(
            "t.scale",
            StepKind.TRANSFORM,
            _scale,
            {
                "type": "object",
                "required": ["factor"],
                "additionalProperties": False,
                "properties": {"factor": {"type": "integer"}, "fail": {"type": "boolean"}},
            },
        )
    )
    child.register(StepType("t.total", StepKind.SINK, _total, {"type": "object"}))
    return child


def scaled(factor: int, fail: bool = False) -> FlowDefinition:
    scale: dict[str, object] = {"factor": factor, **({"fail": True} if fail else {})}
    return (
        Flow("scaled")
        .source("numbers", "t.numbers", n=4)
        .transform("scale", "t.scale", **scale)
        .sink("total", "t.total")
        .build()
    )


@pytest.mark.parametrize(
    ("parent", "at_step", "overrides", "steps", "flow"),
    [
        (hello_flow(), "greet", {"greet": {"name": "ana"}}, HELLO_ANA, HELLO_ANA_FLOW),
        (chem_flow(), "seed", {"seed": {"text": "Adios"}}, CHEM_ADIOS, CHEM_ADIOS_FLOW),
        (chem_flow(), "split", {}, GOLDEN["chem"].steps, GOLDEN["chem"].flow),
        (chem_flow(), "print_and_count", {}, GOLDEN["chem"].steps, GOLDEN["chem"].flow),
    ],
    ids=["hello-at-greet-ana", "chem-at-seed-adios", "chem-at-split", "chem-at-last"],
)
async def test_branch_fingerprints_equal_a_fresh_run(
    engine: Engine,
    store: EventStore,
    ns: str,
    parent: FlowDefinition,
    at_step: str,
    overrides: dict[str, dict[str, str]],
    steps: dict[str, str],
    flow: str,
) -> None:
    run = await engine.run(parent, namespace=ns)
    branch = await engine.branch(ns, run.flow_id, at_step, overrides, started_by="bob")
    assert not branch.existed
    state = await branch.run_to_end()
    assert state.completed
    assert {s.step_id: s.fingerprint for s in state.steps} == steps
    assert state.flow_fingerprint == flow
    assert await verify_independently(store, branch) == list(steps.values())
    # The same params in a fresh run give the same fingerprints.
    fresh_definition = FlowDefinition(
        parent.name,
        tuple(StepSpec(s.id, s.type, s.kind, overrides.get(s.id, s.params)) for s in parent.steps),
    )
    fresh = await engine.run(fresh_definition, namespace=ns)
    assert await fresh.flow_fingerprint() == flow
    # The branch's record: a child of the parent, forked after the step before at_step.
    record = await store.get_flow(ns, branch.flow_id)
    assert record.parent_flow_id == run.flow_id
    assert record.status is FlowStatus.COMPLETED
    assert record.created_by == "bob"
    at = parent.step_ids.index(at_step)
    parent_events = await run.events()
    fork = record.fork_version
    assert fork == (1 if at == 0 else 2 * at + 1)  # I, then S F per step
    assert isinstance(parent_events[fork - 1].event, StepFinished) or at == 0
    # The prefix is the parent's own events (same global seq), not copies.
    branch_events = await branch.events()
    assert [e.stored.seq for e in branch_events[:fork]] == [
        e.stored.seq for e in parent_events[:fork]
    ]
    assert branch_events[fork].event == PropertyPreferenceAssigned(overrides)
    assert await branch.event_variants() == "I" + "SF" * at + "P" + "SF" * (3 - at) + "C"


async def test_overrides_of_later_steps_change_only_those_fingerprints(
    store: EventStore, scaled_registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=scaled_registry)
    run = await engine.run(scaled(2), namespace=ns)
    parent = await run.state()
    branch = await engine.branch(ns, run.flow_id, "numbers", {"scale": {"factor": 3}})
    state = await branch.run_to_end()
    same = [a.fingerprint == b.fingerprint for a, b in zip(parent.steps, state.steps, strict=True)]
    assert same == [True, False, False]
    assert await branch.last_step_output("total") == [18]  # (0+1+2+3) * 3
    fresh = await (await engine.run(scaled(3), namespace=ns)).state()
    assert [s.fingerprint for s in fresh.steps] == [s.fingerprint for s in state.steps]
    assert fresh.flow_fingerprint == state.flow_fingerprint
    assert (await engine.verify(ns, branch.flow_id)).ok


async def test_a_failed_flow_branched_at_its_failed_step_with_other_params(
    store: EventStore, scaled_registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=scaled_registry)
    run = await engine.run(scaled(2, fail=True), namespace=ns)
    assert (await run.state()).failed
    assert await run.event_variants() == "ISFSXE"
    with pytest.raises(FailedPrecondition) as exc:
        await engine.branch(ns, run.flow_id, "total")
    assert exc.value.reason == "STEP_NOT_REACHED"
    branch = await engine.branch(ns, run.flow_id, "scale", {"scale": {"factor": 2}})
    state = await branch.run_to_end()
    assert state.completed
    assert await branch.event_variants() == "ISFPSFSFC"
    fresh = await (await engine.run(scaled(2), namespace=ns)).state()
    assert state.flow_fingerprint == fresh.flow_fingerprint


async def test_bad_branch_requests_write_nothing(
    engine: Engine, store: EventStore, ns: str
) -> None:
    run = await engine.run(chem_flow(), namespace=ns)
    cases: list[tuple[str, dict[str, dict[str, object]], str]] = [
        ("nope", {}, "at_step"),
        ("split", {"seed": {"text": "x"}}, "params_overrides.seed"),
        ("seed", {"nope": {}}, "params_overrides.nope"),
        ("seed", {"seed": {"text": 3}}, "params_overrides.seed.text"),
        ("seed", {"seed": {"txt": "x"}}, "params_overrides.seed.txt"),
        ("seed", {"seed": {}}, "params_overrides.seed.text"),
        ("split", {"split": {"x": float("nan")}}, "params_overrides.split"),
    ]
    for at_step, overrides, field in cases:
        with pytest.raises(InvalidArgument) as exc:
            await engine.branch(ns, run.flow_id, at_step, overrides)
        assert field in [v.field for v in exc.value.violations], (at_step, overrides)
        assert exc.value.violations[0].field in exc.value.message
    running = await engine.start(chem_flow(), namespace=ns)
    await running.next()
    with pytest.raises(FailedPrecondition) as fp:
        await engine.branch(ns, running.flow_id, "split")
    assert fp.value.reason == "FLOW_NOT_ENDED"
    children = await store.list_flows(FlowFilter(ns, parent_flow_id=run.flow_id), Page())
    assert children.flows == ()
    assert len((await store.list_flows(FlowFilter(ns), Page())).flows) == 2


async def test_branching_is_idempotent_by_key(engine: Engine, store: EventStore, ns: str) -> None:
    run = await engine.run(hello_flow(), namespace=ns)
    overrides = {"greet": {"name": "ana"}}
    first = await engine.branch(ns, run.flow_id, "greet", overrides, idempotency_key="b-1")
    assert first.flow_id == flow_id_for_key(ns, "b-1")
    assert not first.existed
    again = await engine.branch(ns, run.flow_id, "greet", overrides, idempotency_key="b-1")
    assert again.flow_id == first.flow_id
    assert again.existed
    assert await first.event_variants() == "IP"
    await again.run_to_end()
    after = await engine.branch(ns, run.flow_id, "greet", overrides, idempotency_key="b-1")
    assert after.existed
    assert await after.flow_fingerprint() == HELLO_ANA_FLOW
    for at_step, other in [("greet", {"greet": {"name": "bo"}}), ("shout", {})]:
        with pytest.raises(AlreadyExists) as exc:
            await engine.branch(ns, run.flow_id, at_step, other, idempotency_key="b-1")
        assert exc.value.reason == "IDEMPOTENCY_KEY_REUSED"
    children = await store.list_flows(FlowFilter(ns, parent_flow_id=run.flow_id), Page())
    assert [f.flow_id for f in children.flows] == [first.flow_id]


async def test_a_branch_of_a_branch_keeps_its_parents_params(
    engine: Engine, store: EventStore, ns: str
) -> None:
    run = await engine.run(hello_flow(), namespace=ns)
    child = await engine.branch(ns, run.flow_id, "greet", {"greet": {"name": "ana"}})
    await child.run_to_end()
    for at_step in ("greet", "shout", "done"):
        grandchild = await engine.branch(ns, child.flow_id, at_step)
        state = await grandchild.run_to_end()
        assert state.flow_fingerprint == HELLO_ANA_FLOW, at_step
        assert await verify_independently(store, grandchild) == list(HELLO_ANA.values())
    back = await engine.branch(ns, child.flow_id, "greet", {"greet": {"name": "world"}})
    assert (await back.run_to_end()).flow_fingerprint == GOLDEN["hello"].flow


class Crash(BaseException):
    """The process dying (not an Exception: nothing may record it)."""


async def test_a_branch_interrupted_before_its_params_is_finished_by_branching_again(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry)
    run = await engine.run(hello_flow(), namespace=ns)

    async def die_on_params(cmd: Append, inner: AppendFn) -> AppendResult:
        if cmd.command_id.endswith(":branch"):
            raise Crash
        return await inner(cmd)

    doomed = Engine(DelegatingStore(store, die_on_params), registry=registry)
    overrides = {"greet": {"name": "ana"}}
    with pytest.raises(Crash):
        await doomed.branch(ns, run.flow_id, "greet", overrides, idempotency_key="k")
    # The branch exists with only the parent's prefix: it must not run on the parent's params.
    orphan = await engine.attach(flow_id_for_key(ns, "k"), namespace=ns)
    with pytest.raises(FailedPrecondition) as exc:
        await orphan.next()
    assert exc.value.reason == "BRANCH_NOT_INITIALIZED"
    assert await orphan.event_variants() == "I"
    branch = await engine.branch(ns, run.flow_id, "greet", overrides, idempotency_key="k")
    assert branch.existed
    assert (await branch.run_to_end()).flow_fingerprint == HELLO_ANA_FLOW
    finished = Counter(
        e.event.step_id for e in await branch.events() if isinstance(e.event, StepFinished)
    )
    assert finished == Counter(greet=1, shout=1, done=1)
