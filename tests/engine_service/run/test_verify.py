"""Verify: clean flows and branches verify; forged logs and, over Postgres, artifacts altered or
deleted in the database are reported at the first divergence."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from engine_service.core.event_codec import encode
from engine_service.core.events import (
    EngineEvent,
    FlowCompleted,
    FlowInitialized,
    StepFinished,
    StepStarted,
)
from engine_service.definitions.builder import Flow
from engine_service.definitions.samples import chem_flow, hello_flow
from engine_service.run.engine import Engine, VerifyReport
from engine_service.steps.context import StepContext, StepResult
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import content_hash
from flowledger.errors import NotFound
from flowledger_core.domain import Append, NewFlow
from flowledger_core.ports import EventStore


async def test_clean_flows_verify(engine: Engine, ns: str) -> None:
    chem = await engine.run(chem_flow(), namespace=ns)
    # null input, {"text": "Hola"}, four parts, {"count": 4}
    assert await engine.verify(ns, chem.flow_id) == VerifyReport(True, 8, 7)
    hello = await engine.run(hello_flow(), {"name": "ana"}, namespace=ns, variables={"v": 1})
    # input, variables and one output per step
    assert await engine.verify(ns, hello.flow_id) == VerifyReport(True, 8, 5)
    branch = await engine.branch(ns, hello.flow_id, "shout", {})
    await branch.run_to_end()
    assert await engine.verify(ns, branch.flow_id) == VerifyReport(True, 9, 5)
    with pytest.raises(NotFound):
        await engine.verify(ns, "00000000-0000-4000-8000-000000000000")


async def test_a_failed_and_an_unfinished_flow_verify(engine: Engine, ns: str) -> None:
    started = await engine.start(chem_flow(), namespace=ns)
    await started.next()
    assert (await engine.verify(ns, started.flow_id)).ok

    def explode(ctx: StepContext) -> StepResult:
        raise ValueError("no parts today")

    boom = Flow("boom").source("seed", "chem.seed", text="x").transform("explode", explode)
    failed = await engine.run(boom.build(), namespace=ns)
    assert (await failed.state()).failed
    assert await engine.verify(ns, failed.flow_id) == VerifyReport(True, 6, 2)


Forge = Callable[[list[EngineEvent]], list[EngineEvent]]


def _replace_at(index: int, **changes: Any) -> Forge:
    def forge(events: list[EngineEvent]) -> list[EngineEvent]:
        out = list(events)
        event: Any = out[index]
        out[index] = dataclasses.replace(event, **changes)
        return out

    return forge


def _drop(index: int) -> Forge:
    return lambda events: events[:index] + events[index + 1 :]


BAD = "0" * 64


@pytest.mark.parametrize(
    ("forge", "version", "step_id", "kind"),
    [
        (_replace_at(0, definition_hash=BAD), 1, "", "definition_hash"),
        (_replace_at(0, input_hash=BAD), 1, "", "missing_artifact"),
        (_replace_at(4, fingerprint=BAD), 5, "split", "step_fingerprint"),
        (_replace_at(4, input_hashes=(BAD,)), 5, "split", "step_fingerprint"),
        (_replace_at(4, output_hashes=(BAD,)), 5, "split", "missing_artifact"),
        (_replace_at(7, flow_fingerprint=BAD), 8, "", "flow_fingerprint"),
        (_drop(3), 4, "split", "event_order"),
        # Two forgeries: the first one in the log is reported.
        (
            lambda e: _replace_at(7, flow_fingerprint=BAD)(_replace_at(2, fingerprint=BAD)(e)),
            3,
            "seed",
            "step_fingerprint",
        ),
    ],
    ids=[
        "definition_hash",
        "missing-input",
        "step-fingerprint",
        "input-hashes",
        "missing-output",
        "flow-fingerprint",
        "order",
        "first-of-two",
    ],
)
async def test_forged_logs_are_reported_at_the_first_divergence(
    engine: Engine,
    store: EventStore,
    ns: str,
    forge: Forge,
    version: int,
    step_id: str,
    kind: str,
) -> None:
    real = await engine.run(chem_flow(), namespace=ns)
    events = forge([e.event for e in await real.events()])
    assert isinstance(events[0], FlowInitialized)
    flow, _ = await store.create_flow(NewFlow(ns, "forged"))
    for position, event in enumerate(events):
        await store.append(
            Append(ns, flow.flow_id, position, f"forged-{position}", (encode(event),))
        )
    report = await engine.verify(ns, flow.flow_id)
    assert not report.ok
    assert report.divergence is not None
    assert (report.divergence.version, report.divergence.step_id, report.divergence.kind) == (
        version,
        step_id,
        kind,
    )
    assert report.events_checked == version
    assert report.divergence.detail


async def test_an_unknown_event_payload_is_an_order_divergence(
    engine: Engine, store: EventStore, ns: str
) -> None:
    real = await engine.start(chem_flow(), namespace=ns)
    state = await real.state()
    bad = dataclasses.replace(encode(StepStarted("seed", 0, 1)), payload_json='{"kind": "Nope"}')
    await store.append(Append(ns, real.flow_id, state.version, "bad", (bad,)))
    report = await engine.verify(ns, real.flow_id)
    assert report.divergence is not None
    assert (report.divergence.version, report.divergence.kind) == (2, "event_order")


@pytest.mark.postgres_only
async def test_an_artifact_altered_in_the_database_is_caught(
    postgres_store: EventStore, migrated_database_url: str, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(postgres_store, registry=registry)
    run = await engine.run(chem_flow(), namespace=ns)
    branch = await engine.branch(ns, run.flow_id, "print_and_count")
    await branch.run_to_end()
    finished = {
        e.event.step_id: (e.version, e.event)
        for e in await run.events()
        if isinstance(e.event, StepFinished)
    }
    split_version, split = finished["split"]
    target = split.output_hashes[2]  # {"index": 2, "text": "l"}
    altered = {"index": 2, "text": "L"}
    async with await psycopg.AsyncConnection.connect(migrated_database_url) as conn:
        await conn.execute(
            "UPDATE workflow_step_artifacts SET payload = %s::jsonb WHERE artifact_hash = %s",
            (json.dumps(altered), target),
        )
    for flow_id in (run.flow_id, branch.flow_id):  # the branch reads the parent's artifacts
        report = await engine.verify(ns, flow_id)
        assert not report.ok
        assert report.divergence is not None
        assert (report.divergence.version, report.divergence.step_id) == (split_version, "split")
        assert report.divergence.kind == "artifact_hash"
        assert report.divergence.recorded == target
        assert report.divergence.recomputed == content_hash(altered)
    # An artifact deleted outright is reported as missing, at the step that produced it.
    seed_version, seed = finished["seed"]
    async with await psycopg.AsyncConnection.connect(migrated_database_url) as conn:
        await conn.execute(
            "DELETE FROM workflow_step_artifacts WHERE artifact_hash = %s", (seed.output_hashes[0],)
        )
    report = await engine.verify(ns, run.flow_id)
    assert report.divergence is not None
    assert (report.divergence.version, report.divergence.step_id) == (seed_version, "seed")
    assert report.divergence.kind == "missing_artifact"
    assert isinstance((await run.events())[-1].event, FlowCompleted)
