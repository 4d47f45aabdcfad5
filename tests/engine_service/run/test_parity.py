"""The same flows on the in-memory and the Postgres store: identical events (ids and timestamps
aside), artifacts, statuses, snapshots and fingerprints."""

from __future__ import annotations

import pytest

from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.definitions.samples import chem_flow, hello_flow
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.steps.context import StepContext, StepResult, success
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import parse_json
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.helpers import normalized


def _signalling(ctx: StepContext) -> StepResult:
    return success({"n": 1}, {"n": 1}, signals=[("half", {"at": 1})])


def _failing(ctx: StepContext) -> StepResult:
    raise RuntimeError("deliberate")


FLOWS: dict[str, tuple[FlowDefinition, object]] = {
    "chem": (chem_flow(), None),
    "chem-hello-input": (chem_flow("Hello"), {"run": 2}),
    "hello": (hello_flow(), {"name": "ana"}),
    "signals-and-equal-outputs": (
        Flow("sig").source("s", _signalling).sink("count", "chem.print_and_count").build(),
        [1, 2],
    ),
    "failing": (
        Flow("fail").source("s", "chem.seed", text="x").transform("f", _failing).build(),
        {},
    ),
}


async def _run(store: EventStore, registry: StepRegistry, name: str, ns: str) -> dict[str, object]:
    definition, flow_input = FLOWS[name]
    engine = Engine(store, registry=registry, settings=EngineSettings(snapshot_every=2))
    run = await engine.run(definition, flow_input, namespace=ns, variables={"v": 1})
    events = [e.stored for e in await run.events()]
    hashes = sorted(
        {h for e in events for h in parse_json(e.payload_json).get("output_hashes", [])}
        | {parse_json(events[0].payload_json)["input_hash"]}
    )
    lookup = await store.get_artifacts(ns, hashes)
    snapshot = await store.load_snapshot(ns, run.flow_id)
    assert snapshot is not None
    return {
        "events": normalized(events),
        "artifacts": sorted((a.hash, parse_json(a.payload_json)) for a in lookup.found),
        "missing": lookup.missing,
        "status": (await store.get_flow(ns, run.flow_id)).status,
        "snapshot": (snapshot.version, parse_json(snapshot.state_json)),
        "fingerprint": await run.flow_fingerprint(),
        "state": await run.state(),
    }


@pytest.mark.parametrize("name", FLOWS)
async def test_memory_and_postgres_agree(
    memory_store: MemoryEventStore,
    postgres_store: EventStore,
    registry: StepRegistry,
    ns: str,
    name: str,
) -> None:
    on_memory = await _run(memory_store, registry, name, ns)
    on_postgres = await _run(postgres_store, registry, name, ns)
    assert on_memory == on_postgres
    assert on_memory["missing"] == ()
