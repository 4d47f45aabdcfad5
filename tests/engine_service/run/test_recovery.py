"""Crashes, lost responses, concurrent writers and racing engines: the log decides, every
step is recorded finished once, and the fingerprint is that of an uninterrupted run."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from engine_service.core.event_codec import encode
from engine_service.core.events import FlowInitialized, SignalReceived, StepFinished, StepStarted
from engine_service.core.ids import command_id, flow_id_for_key
from engine_service.core.replay import StepStatus
from engine_service.definitions.samples import chem_flow, install, split
from engine_service.fingerprint import ENGINE_VERSION
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.run.flow_run import FlowRun
from engine_service.steps.context import StepContext, StepKind, StepResult
from engine_service.steps.registry import StepRegistry, StepType
from flowledger.canonical import content_hash
from flowledger.errors import Aborted, FailedPrecondition, Unavailable
from flowledger_core.domain import (
    Append,
    AppendResult,
    EventType,
    NewArtifact,
    NewFlow,
    Prune,
)
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore
from tests.engine_service.run.test_engine import GOLDEN

CHEM_FINGERPRINT = GOLDEN["chem"].flow


class Crash(BaseException):
    """Stands for the process dying mid-step (not an Exception: nothing may record it)."""


def counting_registry(counts: Counter[str], crash_split: bool = False) -> StepRegistry:
    """The sample types, with ``chem.split`` counting its executions (and crashing, if asked)."""
    registry = StepRegistry()
    install(registry)
    child = registry.child()

    def counted_split(ctx: StepContext) -> StepResult:
        counts["split"] += 1
        if crash_split:
            raise Crash
        return split(ctx)

    child.register(StepType("chem.split", StepKind.TRANSFORM, counted_split, {"type": "object"}))
    return child


async def finished_per_step(run: FlowRun) -> Counter[str]:
    return Counter(e.event.step_id for e in await run.events() if isinstance(e.event, StepFinished))


async def test_crash_after_step_started_is_recovered_by_a_fresh_engine(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    await run.next()
    state = await run.state()
    # What a replica that died right after StepStarted leaves behind.
    await store.append(
        Append(
            ns,
            run.flow_id,
            state.version,
            command_id(run.flow_id, 0, 1, 1, "started"),
            (encode(StepStarted("split", 1, 1)),),
        )
    )
    fresh = await Engine(store, registry=registry).attach(run.flow_id, namespace=ns)
    assert (await fresh.state()).steps[1].status is StepStatus.RUNNING
    final = await fresh.run_to_end()
    assert final.completed
    assert final.flow_fingerprint == CHEM_FINGERPRINT
    assert await fresh.event_variants() == "ISFSFSFC"
    assert await finished_per_step(fresh) == Counter(seed=1, split=1, print_and_count=1)


async def test_crash_inside_a_step_reruns_it_on_another_engine(store: EventStore, ns: str) -> None:
    counts: Counter[str] = Counter()
    doomed = Engine(store, registry=counting_registry(counts, crash_split=True))
    run = await doomed.start(chem_flow(), namespace=ns)
    with pytest.raises(Crash):
        await run.run_to_end()
    assert await run.event_variants() == "ISFS"
    survivor = Engine(store, registry=counting_registry(counts))
    final = await (await survivor.attach(run.flow_id, namespace=ns)).run_to_end()
    assert final.flow_fingerprint == CHEM_FINGERPRINT
    assert counts["split"] == 2  # at least once: the crashed execution and the recovery
    assert await run.event_variants() == "ISFSFSFC"


async def test_a_lost_append_response_is_not_recorded_twice(store: EventStore, ns: str) -> None:
    counts: Counter[str] = Counter()
    lost: list[str] = []

    async def lose_split_finished(cmd: Append, inner: AppendFn) -> AppendResult:
        result = await inner(cmd)
        if cmd.command_id.endswith(":s1:a1:finished") and not lost:
            lost.append(cmd.command_id)
            raise Unavailable("connection reset after the commit")
        return result

    flaky = DelegatingStore(store, lose_split_finished)
    run = await Engine(flaky, registry=counting_registry(counts)).start(chem_flow(), namespace=ns)
    await run.next()
    with pytest.raises(Unavailable):
        await run.next()
    # The handle re-reads before deciding: split is finished, so the next step is the sink.
    step = await run.next()
    assert step is not None
    assert step.step_id == "print_and_count"
    assert counts["split"] == 1
    assert await run.flow_fingerprint() == CHEM_FINGERPRINT
    assert await finished_per_step(run) == Counter(seed=1, split=1, print_and_count=1)


async def test_duplicate_answers_make_the_engine_re_read(store: EventStore, ns: str) -> None:
    """Every append is sent twice, as a transport retry would: the store answers the second
    with ``duplicate``, and the engine finds its own events by re-reading."""
    duplicates: list[bool] = []

    async def twice(cmd: Append, inner: AppendFn) -> AppendResult:
        await inner(cmd)
        result = await inner(cmd)
        duplicates.append(result.duplicate)
        return result

    counts: Counter[str] = Counter()
    engine = Engine(DelegatingStore(store, twice), registry=counting_registry(counts))
    run = await engine.run(chem_flow(), namespace=ns)
    assert all(duplicates)
    assert counts["split"] == 1
    assert await run.event_variants() == "ISFSFSFC"
    assert await run.flow_fingerprint() == CHEM_FINGERPRINT


async def test_a_concurrent_writer_causes_a_re_read_not_a_blind_re_append(
    store: EventStore, ns: str
) -> None:
    counts: Counter[str] = Counter()
    registry = counting_registry(counts).child()

    async def split_with_interference(ctx: StepContext) -> StepResult:
        counts["split"] += 1
        flow = await store.get_flow(ctx.namespace, ctx.flow_id)
        if counts["split"] == 1:  # another writer appends while the step runs
            await store.append(
                Append(
                    ctx.namespace,
                    ctx.flow_id,
                    flow.version,
                    "someone-else",
                    (encode(SignalReceived("ping", content_hash(None), "r1", "someone")),),
                    (NewArtifact(content_hash(None), "signal_payload", "null"),),
                )
            )
        return split(ctx)

    registry.register(
        StepType("chem.split", StepKind.TRANSFORM, split_with_interference, {"type": "object"})
    )
    run = await Engine(store, registry=registry).run(chem_flow(), namespace=ns)
    assert await run.event_variants() == "ISFSNFSFC"
    assert counts["split"] == 1  # the planned outcome was reused after the conflict
    assert await run.flow_fingerprint() == CHEM_FINGERPRINT


async def test_two_engines_racing_on_one_flow(store: EventStore, ns: str) -> None:
    counts: Counter[str] = Counter()
    a = Engine(store, registry=counting_registry(counts), settings=EngineSettings(snapshot_every=1))
    b = Engine(store, registry=counting_registry(counts))
    run_a = await a.start(chem_flow(), namespace=ns)
    run_b = await b.attach(run_a.flow_id, namespace=ns)
    final_a, final_b = await asyncio.gather(run_a.run_to_end(), run_b.run_to_end())
    assert final_a == final_b
    assert final_a.flow_fingerprint == CHEM_FINGERPRINT
    assert await run_a.event_variants() == "ISFSFSFC"
    assert await finished_per_step(run_a) == Counter(seed=1, split=1, print_and_count=1)
    assert 1 <= counts["split"] <= 2


async def test_an_interrupted_start_is_completed_by_starting_again(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry)
    flow_id = flow_id_for_key(ns, "k")
    # The flow record was created, then the process died before FlowInitialized.
    await store.create_flow(NewFlow(ns, "chem", flow_id))
    with pytest.raises(FailedPrecondition) as exc:
        await (await engine.attach(flow_id, namespace=ns)).next()
    assert exc.value.reason == "FLOW_NOT_INITIALIZED"
    run = await engine.start(chem_flow(), namespace=ns, idempotency_key="k")
    assert run.flow_id == flow_id
    assert (await run.run_to_end()).flow_fingerprint == CHEM_FINGERPRINT


async def test_attach_refuses_what_it_cannot_run_faithfully(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry)
    run = await engine.start(chem_flow(), namespace=ns)
    other = await engine.attach(run.flow_id, namespace=ns, definition=chem_flow("Adios"))
    with pytest.raises(FailedPrecondition) as exc:
        await other.next()
    assert exc.value.reason == "DEFINITION_MISMATCH"
    bare = await Engine(store, registry=StepRegistry()).attach(run.flow_id, namespace=ns)
    assert await bare.event_variants() == "I"  # reading needs no step types
    with pytest.raises(FailedPrecondition) as exc:
        await bare.next()
    assert exc.value.reason == "STEP_TYPES_UNAVAILABLE"
    fenced = await engine.attach(run.flow_id, namespace=ns, fencing_token=41)
    with pytest.raises(FailedPrecondition):
        await fenced.next()
    assert await run.event_variants() == "I"  # none of them wrote anything


async def test_a_flow_of_another_fingerprint_scheme_is_not_continued(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    definition = chem_flow()
    flow, _ = await store.create_flow(NewFlow(ns, "chem"))
    init = FlowInitialized(
        "chem", 0, definition.definition_hash, definition.steps, "a" * 64, None, "flowledger-fp/0"
    )
    await store.append(Append(ns, flow.flow_id, 0, "init", (encode(init),)))
    assert init.engine_version != ENGINE_VERSION
    run = await Engine(store, registry=registry).attach(flow.flow_id, namespace=ns)
    with pytest.raises(FailedPrecondition) as exc:
        await run.next()
    assert exc.value.reason == "ENGINE_VERSION_MISMATCH"


async def test_a_pruned_flow_reruns_its_cut_steps_under_new_command_ids(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry)
    run = await engine.run(chem_flow(), namespace=ns)
    await store.prune(
        Prune(ns, run.flow_id, keep_through_version=3, expected_version=8, command_id="prune-1")
    )
    again = await Engine(store, registry=registry).attach(run.flow_id, namespace=ns)
    assert await again.event_variants() == "ISF"
    final = await again.run_to_end()
    # The store remembers the first run's command ids; the new generation's differ, so the
    # re-run is written instead of being answered as a duplicate.
    assert await again.event_variants() == "ISFSFSFC"
    assert final.flow_fingerprint == CHEM_FINGERPRINT


async def test_a_store_that_refuses_without_moving_on_is_given_up(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    async def liar(cmd: Append, inner: AppendFn) -> AppendResult:
        if cmd.events[0].type is EventType.FLOW_INITIALIZED:
            return await inner(cmd)
        return AppendResult(1, 1, (1,), duplicate=True)  # claims a write the log never shows

    run = await Engine(DelegatingStore(store, liar), registry=registry).start(
        chem_flow(), namespace=ns
    )
    with pytest.raises(Aborted) as exc:
        await run.next()
    assert exc.value.reason == "NO_PROGRESS"
