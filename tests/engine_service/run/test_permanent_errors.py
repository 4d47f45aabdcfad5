"""Errors no attempt gets past end the flow FAILED, once (engine_service/planning/permanent.py): an
artifact altered or deleted in Postgres, an append the store service refuses. Transient errors
still stop the run without ending the flow."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import psycopg
import pytest

from engine_service.core.events import FlowFailed, StepFailed
from engine_service.definitions.builder import Flow
from engine_service.definitions.samples import chem_flow
from engine_service.run import tasks
from engine_service.run.engine import Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.run.flow_run import FlowRun
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.registry import StepRegistry
from engine_service.store_client.client import GrpcEventStore
from flowledger.errors import Unavailable
from flowledger_core.domain import Append, AppendResult, EventType, FlowStatus
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from store_service.settings import Limits
from tests.engine_service.helpers import AppendFn, DelegatingStore
from tests.fixtures.store_client import FAST
from tests.fixtures.store_server import running_store, store_settings

pytestmark = pytest.mark.postgres_only


async def _failures(run: FlowRun) -> list[StepFailed | FlowFailed]:
    return [e.event for e in await run.events() if isinstance(e.event, StepFailed | FlowFailed)]


async def _alter(url: str, artifact_hash: str, payload: object | None) -> None:
    """Overwrite (or, for None, delete) an artifact's stored payload behind the store's back."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        if payload is None:
            await conn.execute(
                "DELETE FROM workflow_step_artifacts WHERE artifact_hash = %s", (artifact_hash,)
            )
        else:
            await conn.execute(
                "UPDATE workflow_step_artifacts SET payload = %s::jsonb WHERE artifact_hash = %s",
                (json.dumps(payload), artifact_hash),
            )


async def _output_of(run: FlowRun, step_id: str) -> str:
    state = await run.state()
    step = state.step(step_id)
    assert step is not None
    return step.output_hashes[0]


@pytest.mark.parametrize(
    ("altered", "error_type"),
    [({"index": 0, "text": "X"}, "ArtifactCorrupt"), (None, "ArtifactMissing")],
    ids=["corrupt", "missing"],
)
async def test_a_branch_reading_an_unusable_artifact_fails_once(
    postgres_store: EventStore,
    migrated_database_url: str,
    registry: StepRegistry,
    ns: str,
    altered: object | None,
    error_type: str,
) -> None:
    engine = Engine(postgres_store, registry=registry)
    parent = await engine.run(chem_flow(), namespace=ns)
    await _alter(migrated_database_url, await _output_of(parent, "split"), altered)
    branch = await engine.branch(ns, parent.flow_id, "print_and_count")
    state = await branch.run_to_end()  # once raised InternalError here, run after run
    assert state.failed
    [step_failed, flow_failed] = await _failures(branch)
    assert isinstance(step_failed, StepFailed)
    assert (step_failed.step_id, step_failed.error_type) == ("print_and_count", error_type)
    assert isinstance(flow_failed, FlowFailed)
    assert flow_failed.error_type == error_type
    assert step_failed.reason.startswith(f"ARTIFACT_{error_type[8:].upper()}: ")
    flow = await postgres_store.get_flow(ns, branch.flow_id)
    assert flow.status is FlowStatus.FAILED
    # Another engine attaching later finds it ended: nothing more is written.
    again = await engine.attach(branch.flow_id, namespace=ns)
    assert (await again.run_to_end()).failed
    assert len(await _failures(again)) == 2


async def test_a_task_whose_input_is_corrupt_fails_instead_of_being_leased(
    postgres_store: EventStore, migrated_database_url: str, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(postgres_store, registry=registry)
    flow = Flow("k").source("seed", "chem.seed", text="Hola").task("work", "q").build()
    run = await engine.start(flow, namespace=ns)
    await run.run_to_end()
    assert (await postgres_store.get_flow(ns, run.flow_id)).task_queue == "q"
    await _alter(migrated_database_url, await _output_of(run, "seed"), {"text": "Adios"})
    assert await tasks.poll(engine, ns, ("q",), "w-1", 30_000, 0) is None
    assert (await postgres_store.get_flow(ns, run.flow_id)).status is FlowStatus.FAILED
    [step_failed, flow_failed] = await _failures(run)
    assert (step_failed.step_id, step_failed.error_type) == ("work", "ArtifactCorrupt")
    assert flow_failed.error_type == "ArtifactCorrupt"
    assert await tasks.poll(engine, ns, ("q",), "w-1", 30_000, 0) is None


def _big(ctx: StepContext) -> StepResult:
    return success({"blob": "x" * 4096})


@pytest.fixture
async def small_store() -> AsyncIterator[GrpcEventStore]:
    """The store service (memory backend) with a 2 KiB payload limit, through the engine's
    gRPC client."""
    backend = MemoryEventStore()
    settings = store_settings(limits=Limits(max_payload_bytes=2048))
    async with running_store(backend, settings) as running:
        client = GrpcEventStore(running.server.address, FAST)
        yield client
        await client.close()
    await backend.close()


@pytest.mark.parametrize("continue_on_error", [False, True])
async def test_an_append_the_store_refuses_fails_the_flow_once(
    small_store: GrpcEventStore, registry: StepRegistry, ns: str, continue_on_error: bool
) -> None:
    registry.step("t.big", kind=StepKind.TRANSFORM)(_big)
    flow = (
        Flow("big")
        .source("seed", "chem.seed", text="Hola")
        .transform("big", "t.big").options(continue_on_error=continue_on_error)
        .transform("after", "chem.split")
        .build()
    )  # fmt: skip
    engine = Engine(small_store, registry=registry)
    run = await engine.start(flow, namespace=ns)
    state = await run.run_to_end()  # once raised ResourceExhausted here
    assert state.failed
    [step_failed, flow_failed] = await _failures(run)
    assert isinstance(step_failed, StepFailed)
    assert (step_failed.step_id, step_failed.error_type) == ("big", "WriteRefused")
    assert (step_failed.fingerprint is not None) is continue_on_error
    assert flow_failed.error_type == "WriteRefused"
    assert (await small_store.get_flow(ns, run.flow_id)).status is FlowStatus.FAILED
    assert (await engine.verify(ns, run.flow_id)).ok


async def test_a_transient_error_does_not_end_the_flow(
    postgres_store: EventStore, registry: StepRegistry, ns: str
) -> None:
    refused = 0

    async def unavailable_once(cmd: Append, inner: AppendFn) -> AppendResult:
        nonlocal refused
        if refused == 0 and any(e.type is EventType.STEP_FINISHED for e in cmd.events):
            refused += 1
            raise Unavailable("the store is restarting")
        return await inner(cmd)

    store = DelegatingStore(postgres_store, unavailable_once)
    engine = Engine(store, registry=registry, settings=EngineSettings())
    run = await engine.start(chem_flow(), namespace=ns)
    with pytest.raises(Unavailable):
        await run.run_to_end()
    assert not (await run.state()).terminal
    assert (await run.run_to_end()).completed
