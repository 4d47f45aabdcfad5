"""Flows over the engine API (SDK → engine → store, both backends): start, describe, list,
watch, artifacts; bad input gets the right code and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from flowledger.canonical import content_hash
from flowledger.client import FlowledgerClient
from flowledger.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flowledger.types import EventType, FlowStatus, StepStatus, WatchUpdate
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import BOUND_S, HELLO_DOCUMENT, published
from tests.engine_service.run.test_engine import GOLDEN
from tests.fixtures.store_server import wait_until


async def test_a_started_flow_runs_to_its_golden_fingerprints(
    client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    for golden_name, flow_input in (("hello", None), ("hello-ana", {"name": "ana"})):
        golden = GOLDEN[golden_name]
        started = await client.start_flow(ns, "hello", flow_input, started_by="ada")
        assert not started.existed
        view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
        assert view.status is FlowStatus.COMPLETED
        assert (view.definition_name, view.definition_version) == ("hello", 1)
        assert view.definition_hash == golden.definition_hash
        assert view.cursor == 3
        assert view.variants == "ISFSFSFC"
        assert view.started_by == "ada"
        assert {s.step_id: s.fingerprint for s in view.steps} == golden.steps
        assert all(s.status is StepStatus.FINISHED_OK and s.attempts == 1 for s in view.steps)
        assert view.flow_fingerprint == golden.flow
        done = view.step("done")
        assert done is not None
        fetched = await client.fetch_artifacts(ns, done.output_hashes)
        assert [a.payload for a in fetched.found] == golden.last_output


async def test_starting_again_with_the_key_returns_the_same_flow(
    client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    first = await client.start_flow(ns, "hello", {"name": "ana"}, idempotency_key="order-1")
    again = await client.start_flow(ns, "hello", {"name": "ana"}, idempotency_key="order-1")
    assert again.flow_id == first.flow_id
    assert again.existed
    assert not first.existed
    view = await client.wait_for_flow(ns, first.flow_id, within=BOUND_S)
    after = await client.start_flow(ns, "hello", {"name": "ana"}, idempotency_key="order-1")
    assert after == again
    assert (await client.describe_flow(ns, first.flow_id)).variants == view.variants == "ISFSFSFC"
    assert [f.flow_id for f in (await client.list_flows(ns)).flows] == [first.flow_id]
    with pytest.raises(AlreadyExists):
        await client.start_flow(ns, "hello", {"name": "bob"}, idempotency_key="order-1")


async def test_a_flow_records_the_exact_version_it_ran(client: FlowledgerClient, ns: str) -> None:
    await published(client, ns, "hello")
    other = {"steps": [{"id": "greet", "type": "hello.greet", "config": {"name": "v2"}},
                       {"id": "shout", "type": "hello.shout"}]}
    await published(client, ns, "hello", other)
    pinned = await client.start_flow(ns, "hello", version=1)
    latest = await client.start_flow(ns, "hello")
    pinned_view = await client.wait_for_flow(ns, pinned.flow_id, within=BOUND_S)
    latest_view = await client.wait_for_flow(ns, latest.flow_id, within=BOUND_S)
    assert (pinned_view.definition_version, pinned_view.variants) == (1, "ISFSFSFC")
    assert (latest_view.definition_version, latest_view.variants) == (2, "ISFSFC")
    assert pinned_view.definition_hash != latest_view.definition_hash


@pytest.mark.parametrize("state", ["draft", "archived"])
async def test_only_published_versions_start(
    client: FlowledgerClient, ns: str, state: str
) -> None:
    await client.create_definition(ns, "hello", HELLO_DOCUMENT)
    if state == "archived":
        await client.archive_definition(ns, "hello", 1)
    with pytest.raises(FailedPrecondition) as info:
        await client.start_flow(ns, "hello", version=1, idempotency_key="k")
    assert info.value.metadata["state"] == state
    assert (await client.list_flows(ns)).flows == ()


async def test_bad_start_requests_write_nothing(client: FlowledgerClient, ns: str) -> None:
    with pytest.raises(NotFound):
        await client.start_flow(ns, "nope")
    await published(client, ns, "hello")
    with pytest.raises(NotFound):
        await client.start_flow(ns, "hello", version=9)
    # Input that is not JSON cannot be sent through the SDK's json.dumps: use the raw stub.
    from flowledger.rpc_status import from_rpc_error
    from flowledger.v1 import engine_pb2

    stub = client._stub
    for text in ("{oops", "NaN", "[1,"):
        try:
            await stub.StartFlow(engine_pb2.StartFlowRequest(
                namespace=ns, definition_name="hello", input_json=text))
        except Exception as exc:
            error = from_rpc_error(exc)  # type: ignore[arg-type]
            assert isinstance(error, InvalidArgument)
            assert [v.field for v in error.violations] == ["input_json"]
        else:
            pytest.fail(f"input {text!r} was accepted")
    with pytest.raises(InvalidArgument) as info:
        await client.start_flow(ns, "hello", idempotency_key="k" * 129)
    assert [v.field for v in info.value.violations] == ["idempotency_key"]
    assert (await client.list_flows(ns)).flows == ()


async def test_describe_and_watch_of_unknown_flows(client: FlowledgerClient, ns: str) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFound):
        await client.describe_flow(ns, missing)
    with pytest.raises(NotFound):
        async for _ in client.watch_flow(ns, missing):
            pass
    with pytest.raises(InvalidArgument) as info:
        await client.describe_flow(ns, "not-a-uuid")
    assert [v.field for v in info.value.violations] == ["flow_id"]


async def test_listing_filters_and_pages(client: FlowledgerClient, ns: str) -> None:
    await published(client, ns, "hello")
    await published(client, ns, "other", HELLO_DOCUMENT)
    ids = [(await client.start_flow(ns, "hello", {"n": i})).flow_id for i in range(3)]
    other = (await client.start_flow(ns, "other")).flow_id
    for flow_id in [*ids, other]:
        await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    hello = await client.list_flows(ns, definition_name="hello")
    assert sorted(f.flow_id for f in hello.flows) == sorted(ids)
    completed = await client.list_flows(ns, statuses=[FlowStatus.COMPLETED])
    assert len(completed.flows) == 4
    assert (await client.list_flows(ns, statuses=[FlowStatus.FAILED])).flows == ()
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_flows(ns, page_size=3, page_token=token)
        seen.extend(f.flow_id for f in page.flows)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted([*ids, other])


async def test_watch_catches_up_then_follows_live_until_the_end(
    client: FlowledgerClient, ns: str, gate_dir: Path
) -> None:
    await published(client, ns, "gated", gate_steps.gated_document("w1"))
    started = await client.start_flow(ns, "gated")
    updates: list[WatchUpdate] = []

    async def watch() -> None:
        async for update in client.watch_flow(ns, started.flow_id):
            updates.append(update)

    watcher = asyncio.create_task(watch())
    try:
        # Live: the flow is held inside the gate step, so the stream is open and waiting.
        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "w1")), "the gate", BOUND_S)
        await wait_until(
            lambda: [e.variant for u in updates for e in u.events][-1:] == ["S"],
            "the gate's StepStarted", BOUND_S,
        )
        assert not watcher.done()
        running_status = updates[-1].status
        assert running_status is FlowStatus.RUNNING
        (gate_dir / "w1.open").touch()
        await asyncio.wait_for(watcher, BOUND_S)
    finally:
        watcher.cancel()
    events = [e for u in updates for e in u.events]
    assert [e.version for e in events] == list(range(1, 11))
    assert "".join(e.variant for e in events) == "ISFSFSFSFC"
    assert updates[-1].status is FlowStatus.COMPLETED
    assert events[-1].type is EventType.FLOW_COMPLETED

    # Catch-up of an ended flow, from a version on: the rest, then the stream ends.
    tail = [u async for u in client.watch_flow(ns, started.flow_id, after_version=7)]
    assert [e.version for u in tail for e in u.events] == [8, 9, 10]
    assert [u async for u in client.watch_flow(ns, started.flow_id, after_version=10)] == []


async def test_fetch_artifacts_reports_missing_hashes(client: FlowledgerClient, ns: str) -> None:
    await published(client, ns, "hello")
    view = await client.wait_for_flow(
        ns, (await client.start_flow(ns, "hello")).flow_id, within=BOUND_S
    )
    greet = view.step("greet")
    assert greet is not None
    unknown = content_hash({"never": "stored"})
    fetched = await client.fetch_artifacts(ns, [*greet.output_hashes, unknown])
    assert fetched.missing == (unknown,)
    (artifact,) = fetched.found
    assert artifact.payload == {"message": "hello, world"}
    assert content_hash(json.loads(artifact.payload_json)) == artifact.hash
    with pytest.raises(InvalidArgument) as info:
        await client.fetch_artifacts(ns, ["xyz"])
    assert [v.field for v in info.value.violations] == ["hashes[0]"]
    with pytest.raises(InvalidArgument):
        await client.fetch_artifacts(ns, [])
