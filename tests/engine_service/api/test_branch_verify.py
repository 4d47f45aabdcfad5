"""BranchFlow and VerifyFlow over the engine API: a branch runs and ends with a fresh run's
fingerprint; bad branches get the right code and write nothing; verify finds an artifact whose
payload was altered in the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from flowledger.client import FlowledgerClient
from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger.types import FlowStatus
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import (
    BOUND_S,
    published,
    running_engine,
)
from tests.engine_service.run.test_engine import GOLDEN
from tests.fixtures.store_server import running_store, wait_until


async def _completed(client: FlowledgerClient, ns: str, flow_input: object = None) -> str:
    started = await client.start_flow(ns, "hello", flow_input)
    view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    return started.flow_id


async def test_a_branch_reuses_the_prefix_and_ends_like_a_fresh_run(
    client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    parent = await _completed(client, ns)
    branch = await client.branch_flow(ns, parent, "shout", idempotency_key="b-1")
    assert not branch.existed
    view = await client.wait_for_flow(ns, branch.flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.flow.parent_flow_id == parent
    assert view.flow_fingerprint == GOLDEN["hello"].flow
    # The prefix (I S F of greet) is the parent's; the branch adds its params event (P).
    assert view.variants.startswith("ISFP")
    again = await client.branch_flow(ns, parent, "shout", idempotency_key="b-1")
    assert again.flow_id == branch.flow_id
    assert again.existed
    children = await client.list_flows(ns, parent_flow_id=parent)
    assert [f.flow_id for f in children.flows] == [branch.flow_id]


async def test_a_branch_with_new_params_equals_a_fresh_run_with_them(
    client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    parent = await _completed(client, ns)
    branch = await client.branch_flow(ns, parent, "greet", params={"greet": {"name": "zoe"}})
    branched = await client.wait_for_flow(ns, branch.flow_id, within=BOUND_S)

    fresh_document = {"steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "zoe"}},
        {"id": "shout", "type": "hello.shout"},
        {"id": "done", "type": "hello.done"},
    ]}
    await published(client, ns, "hello", fresh_document)
    fresh = await client.wait_for_flow(
        ns, (await client.start_flow(ns, "hello")).flow_id, within=BOUND_S
    )
    assert branched.flow_fingerprint == fresh.flow_fingerprint
    assert branched.flow_fingerprint != GOLDEN["hello"].flow


async def test_bad_branches_write_nothing(
    client: FlowledgerClient, ns: str, gate_dir: Path
) -> None:
    await published(client, ns, "hello")
    parent = await _completed(client, ns)
    with pytest.raises(InvalidArgument) as info:
        await client.branch_flow(ns, parent, "nope")
    assert [v.field for v in info.value.violations] == ["at_step"]
    with pytest.raises(InvalidArgument) as info:
        await client.branch_flow(ns, parent, "greet", params={"greet": {"name": 5}})
    assert [v.field for v in info.value.violations] == ["params_json.greet.name"]
    with pytest.raises(NotFound):
        await client.branch_flow(ns, "00000000-0000-4000-8000-000000000000", "greet")

    await published(client, ns, "gated", gate_steps.gated_document("b1"))
    running = await client.start_flow(ns, "gated")
    await wait_until(lambda: bool(gate_steps.entered(gate_dir, "b1")), "the gate", BOUND_S)
    with pytest.raises(FailedPrecondition) as state_info:
        await client.branch_flow(ns, running.flow_id, "shout")
    assert state_info.value.reason == "FLOW_NOT_ENDED"
    for flow_id in (parent, running.flow_id):
        assert (await client.list_flows(ns, parent_flow_id=flow_id)).flows == ()
    (gate_dir / "b1.open").touch()
    await client.wait_for_flow(ns, running.flow_id, within=BOUND_S)


async def test_verify_of_a_completed_flow_is_ok(client: FlowledgerClient, ns: str) -> None:
    await published(client, ns, "hello")
    flow_id = await _completed(client, ns)
    report = await client.verify_flow(ns, flow_id)
    assert report.ok
    assert report.divergence is None
    assert report.events_checked == 8
    assert report.artifacts_checked >= 4
    with pytest.raises(NotFound):
        await client.verify_flow(ns, "00000000-0000-4000-8000-000000000000")


@pytest.fixture
async def pg_client(migrated_database_url: str) -> AsyncIterator[tuple[FlowledgerClient, str]]:
    from store_service.adapters.postgres import PostgresEventStore

    backend = await PostgresEventStore.open(
        migrated_database_url, min_connections=1, max_connections=4, apply_migrations=False
    )
    try:
        async with running_store(backend) as store, running_engine(
            store.server.address
        ) as engine, FlowledgerClient(engine.address, timeout=BOUND_S) as sdk:
            yield sdk, migrated_database_url
    finally:
        await backend.close()


async def test_verify_finds_an_artifact_altered_in_the_database(
    pg_client: tuple[FlowledgerClient, str], ns: str
) -> None:
    client, url = pg_client
    await published(client, ns, "hello")
    flow_id = await _completed(client, ns)
    view = await client.describe_flow(ns, flow_id)
    shout = view.step("shout")
    assert shout is not None
    (altered,) = shout.output_hashes
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE workflow_step_artifacts SET payload = %s::jsonb WHERE artifact_hash = %s",
            ['{"message": "HELLO, MALLORY"}', altered],
        )
    report = await client.verify_flow(ns, flow_id)
    assert not report.ok
    assert report.divergence is not None
    assert report.divergence.kind == "artifact_hash"
    assert report.divergence.step_id == "shout"
    assert report.divergence.recorded == altered
