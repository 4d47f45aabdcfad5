"""SQL injection attempts in every string field the store stores, through the real services.

The store serves Postgres as the ``flowledger_app`` role (tests/security/test_db_role.py), the
engine runs in front of it, both on loopback gRPC. Each hostile string goes into every free-text
field of the store's contract (flow names, creators, metadata, event and artifact payloads and
kinds, snapshot states, deletion and prune records, definition documents, notes and actors, lease
owners) and of the engine's (definition notes and actors, flow input, ``started_by``, signal
payloads and ``sent_by``, cancel reasons), is read back verbatim through the API, is found
verbatim in its column by a parameterized query, and leaves every table in place. Identifiers
with an alphabet (namespaces, command ids, definition names) take its nastiest members, and
anything outside it is refused without a write.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import psycopg
import pytest

from flowledger.canonical import canonical_bytes, content_hash
from flowledger.client import FlowledgerClient
from flowledger.types import FlowStatus
from flowledger.v1 import common_pb2, store_pb2, store_pb2_grpc
from flowledger_core.server import client_interceptors
from store_service.server import StoreServer, serve
from tests.engine_service.api.conftest import running_engine
from tests.fixtures.postgres import PgServer, fresh_database
from tests.fixtures.store_server import store_settings
from tests.security.test_db_role import TABLES, app_login

if TYPE_CHECKING:
    from flowledger.v1.store_pb2_grpc import StoreServiceAsyncStub

pytestmark = pytest.mark.postgres_only

BOUND_S = 30.0
WAITING = common_pb2.FLOW_STATUS_WAITING

NASTY = [
    "'); DROP TABLE flows; --",
    "' OR '1'='1",
    "\" OR \"\"=\"",
    "Robert'); DELETE FROM event_log WHERE ('1'='1",
    "1; TRUNCATE event_log CASCADE",
    "$1 $2 %s %(ns)s %b {} {0} {ns} ::text",
    "$$; DROP TABLE flows; $$",
    "$fn$ END; $fn$; DROP FUNCTION flowledger_append_batch; --",
    "\\'; DROP TABLE flows; --",
    "back\\slash \\\\ \\x27 \\u0027 \\n \\0 E'\\''",
    "/* c */ -- c\n; DROP TABLE snapshots",
    "ünïcødé ☃ 𝄞 中文 עברית \u202e\u200b\ufeff",
    "line\nbreak\r\n\ttab\x7f\x01",
    "%",
    "_",
    "'",
    "\"",
    "\\",
    "",
    "x" * 256,
]
IDS = [f"{i:02d}" for i in range(len(NASTY))]

# Nasty members of the id alphabets [A-Za-z0-9._:-] (namespaces, command and request ids) and
# [A-Za-z0-9._-] (definition names), and things outside them.
NASTY_IDS = ["--", "..", "-.-", "a:--:b", "_:_", "x." * 20 + "y"]
OUTSIDE_IDS = ["'; DROP TABLE flows; --", "a b", "a'b", "a\"b", "a;b", "ü", "a\\b", "$1"]


@dataclass
class Services:
    owner_url: str
    store: StoreServer
    stub: StoreServiceAsyncStub
    engine_address: str


@pytest.fixture(scope="module")
def databases(pg_server: PgServer, migrated_template: str) -> Iterator[tuple[str, str]]:
    """(owner URL, app URL) of the module's database."""
    with fresh_database(pg_server, template=migrated_template) as owner, app_login(owner) as app:
        yield owner, app


@pytest.fixture(scope="module")
async def services(databases: tuple[str, str]) -> AsyncIterator[Services]:
    owner, app = databases
    store = await serve(store_settings(database_url=app, migrate_database_url=owner))
    try:
        async with running_engine(store.address) as engine:
            channel = grpc.aio.insecure_channel(store.address, interceptors=client_interceptors())
            async with channel:
                stub: StoreServiceAsyncStub = store_pb2_grpc.StoreServiceStub(channel)
                yield Services(owner, store, stub, engine.address)
    finally:
        await store.stop(grace=1.0)


@pytest.fixture
async def client(services: Services) -> AsyncIterator[FlowledgerClient]:
    async with FlowledgerClient(services.engine_address, timeout=BOUND_S) as sdk:
        yield sdk


def ns() -> str:
    return f"inj-{uuid.uuid4().hex[:10]}"


def cmd() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def js(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def hostile_json(s: str) -> Any:
    """A JSON value carrying ``s`` as a key, a value, in a list and nested."""
    return {"s": s, s: [s, {"k": s}], "n": {"deep": [[s]]}}


def strings(value: Any) -> set[str]:
    """Every string (keys included) in a parsed JSON value."""
    out: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            out.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


async def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """A parameterized query as the owner: where the strings really are."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(statement.encode(), params)
        return await cur.fetchall()


async def assert_intact(owner: str) -> None:
    """Every table is still there, and the log and flows still hold rows."""
    tables = [name for name in TABLES if not name.endswith("_seq") and name != "flow_lease_tokens"]
    found = await sql(owner, "SELECT n, to_regclass(n) IS NOT NULL FROM unnest(%s::text[]) n",
                      (tables,))  # fmt: skip
    assert all(present for _, present in found), found
    counts = await sql(owner, "SELECT (SELECT count(*) FROM flows), (SELECT count(*) FROM "
                       "event_log), (SELECT count(*) FROM pg_proc WHERE proname = "
                       "'flowledger_append_batch')")  # fmt: skip
    flows, events, functions = counts[0]
    assert flows > 0
    assert events > 0
    assert functions == 1


# -- the store's contract ------------------------------------------------------------------------


@pytest.mark.parametrize("s", NASTY, ids=IDS)
async def test_every_store_text_field_keeps_the_string(services: Services, s: str) -> None:
    stub, owner, space = services.stub, services.owner_url, ns()
    meta = js(hostile_json(s))
    # WAITING without a wake-up time: the engine beside us never claims these flows.
    made = await stub.CreateFlow(store_pb2.CreateFlowRequest(
        namespace=space, name=s, metadata_json=meta, created_by=s, status=WAITING))  # fmt: skip
    flow_id = made.flow.flow_id
    # A sibling whose name is not s: a filter by s must not match it.
    await stub.CreateFlow(
        store_pb2.CreateFlowRequest(namespace=space, name="sibling", status=WAITING)
    )
    got = (await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow_id))).flow
    assert (got.name, got.created_by) == (s, s)
    assert json.loads(got.metadata_json) == hostile_json(s)
    if s:  # (an empty name filters nothing)
        listed = await stub.ListFlows(store_pb2.ListFlowsRequest(namespace=space, name=s))
        assert [f.flow_id for f in listed.flows] == [flow_id]

    # Events and artifacts (the flow now waits on a task queue, for the lease below).
    payload = hostile_json(s)
    value = {"v": s, s: s}
    artifact = common_pb2.NewArtifact(
        hash=content_hash(value), kind=s or "k", payload_json=canonical_bytes(value).decode(),
        metadata_json=js({"m": s}), event_index=0,
    )  # fmt: skip
    await stub.AppendEvents(store_pb2.AppendEventsRequest(
        namespace=space, flow_id=flow_id, expected_version=0, command_id=cmd(),
        events=[common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED,
                                    payload_json=js(payload))],
        artifacts=[artifact], new_status=WAITING, task_queue="q",
    ))  # fmt: skip
    events = [e async for r in stub.ReadEvents(
        store_pb2.ReadEventsRequest(namespace=space, flow_id=flow_id)) for e in r.events]
    assert [json.loads(e.payload_json) for e in events] == [payload]
    arts = await stub.GetArtifacts(
        store_pb2.GetArtifactsRequest(namespace=space, hashes=[artifact.hash]))
    assert [(a.kind, json.loads(a.payload_json), json.loads(a.metadata_json))
            for a in arts.artifacts] == [(s or "k", value, {"m": s})]  # fmt: skip

    # Snapshots.
    await stub.SaveSnapshot(store_pb2.SaveSnapshotRequest(
        namespace=space, flow_id=flow_id, version=1, state_json=js(payload)))  # fmt: skip
    snap = await stub.LoadSnapshot(store_pb2.LoadSnapshotRequest(namespace=space, flow_id=flow_id))
    assert json.loads(snap.snapshot.state_json) == payload

    # A branch, its deletion and a prune: who and why are recorded verbatim.
    branch = (await stub.CreateBranch(store_pb2.CreateBranchRequest(
        namespace=space, parent_flow_id=flow_id, fork_version=1, name=s, metadata_json=meta,
        created_by=s, status=WAITING))).flow  # fmt: skip
    assert (branch.name, branch.created_by) == (s, s)
    await stub.DeleteBranch(store_pb2.DeleteBranchRequest(
        namespace=space, flow_id=branch.flow_id, deleted_by=s, reason=s))  # fmt: skip
    assert await sql(owner, "SELECT deleted_by, delete_reason FROM flows WHERE flow_id = %s",
                     (branch.flow_id,)) == [(s, s)]  # fmt: skip
    await stub.PruneFlow(store_pb2.PruneFlowRequest(
        namespace=space, flow_id=flow_id, keep_through_version=1, expected_version=1,
        command_id=cmd(), pruned_by=s, reason=s))  # fmt: skip
    assert await sql(owner, "SELECT created_by, reason FROM flow_generations WHERE flow_id = %s "
                     "AND generation = 1", (flow_id,)) == [(s, s)]  # fmt: skip

    # Leases (a task worker's): the owner is free text.
    owner_name = s[:128] or "o"
    claimed = await stub.ClaimFlows(store_pb2.ClaimFlowsRequest(
        owner=owner_name, limit=10, lease_ms=5000, namespaces=[space], task_queues=["q"]))
    leases = {lease.flow.flow_id: lease for lease in claimed.leases}
    assert list(leases) == [flow_id]
    assert leases[flow_id].owner == owner_name
    await stub.RenewLease(store_pb2.RenewLeaseRequest(
        namespace=space, flow_id=flow_id, owner=owner_name,
        fencing_token=leases[flow_id].fencing_token, lease_ms=5000))  # fmt: skip
    for lease in claimed.leases:
        await stub.ReleaseLease(store_pb2.ReleaseLeaseRequest(
            namespace=space, flow_id=lease.flow.flow_id, fencing_token=lease.fencing_token))

    # Definitions: the document, the note, the creator and every transition's actor.
    document = js({"steps": [{"id": "a", "type": "t", "config": payload}], s: s})
    put = await stub.PutDefinitionVersion(store_pb2.PutDefinitionVersionRequest(
        namespace=space, name="d", definition_json=document, definition_hash="e" * 64,
        change_note=s, created_by=s))  # fmt: skip
    await stub.TransitionDefinitionVersion(store_pb2.TransitionDefinitionVersionRequest(
        namespace=space, name="d", version=put.version.version,
        to_state=store_pb2.STORED_DEFINITION_STATE_PUBLISHED,
        from_states=[store_pb2.STORED_DEFINITION_STATE_DRAFT], change_note=s, actor=s))
    stored = (await stub.GetStoredDefinitionVersion(store_pb2.GetStoredDefinitionVersionRequest(
        namespace=space, name="d", version=put.version.version))).version  # fmt: skip
    assert json.loads(stored.definition_json) == json.loads(document)
    assert (stored.change_note, stored.created_by) == (s, s)
    assert [(h.change_note, h.actor) for h in stored.history] == [(s, s), (s, s)]

    # Where it is stored, found by a parameterized query on the exact text.
    assert await sql(owner, "SELECT count(*) FROM flows WHERE namespace = %s AND name = %s "
                     "AND created_by = %s", (space, s, s)) == [(2,)]  # fmt: skip
    assert await sql(owner, "SELECT count(*) FROM definition_transitions WHERE namespace = %s "
                     "AND actor = %s AND change_note = %s", (space, s, s)) == [(2,)]  # fmt: skip
    await assert_intact(owner)


async def test_ids_take_their_whole_alphabet(services: Services) -> None:
    stub = services.stub
    for ident in NASTY_IDS:
        made = await stub.CreateFlow(store_pb2.CreateFlowRequest(namespace=ident, name="f"))
        await stub.AppendEvents(store_pb2.AppendEventsRequest(
            namespace=ident, flow_id=made.flow.flow_id, expected_version=0, command_id=ident,
            events=[common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED,
                                        payload_json="{}")],
        ))  # fmt: skip
        repeat = await stub.AppendEvents(store_pb2.AppendEventsRequest(
            namespace=ident, flow_id=made.flow.flow_id, expected_version=0, command_id=ident,
            events=[common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED,
                                        payload_json="{}")],
        ))  # fmt: skip
        assert repeat.duplicate
        listed = await stub.ListFlows(store_pb2.ListFlowsRequest(namespace=ident))
        assert made.flow.flow_id in [f.flow_id for f in listed.flows]
        name = ident.replace(":", ".")
        await stub.PutDefinitionVersion(store_pb2.PutDefinitionVersionRequest(
            namespace=ident, name=name, definition_json="{}", definition_hash="f" * 64,
            request_id=ident))  # fmt: skip
        got = await stub.GetStoredDefinitionVersion(store_pb2.GetStoredDefinitionVersionRequest(
            namespace=ident, name=name, version=1))  # fmt: skip
        assert got.version.name == name
    await assert_intact(services.owner_url)


@pytest.mark.parametrize("ident", OUTSIDE_IDS)
async def test_ids_outside_their_alphabet_are_refused_and_nothing_is_written(
    services: Services, ident: str
) -> None:
    stub, owner = services.stub, services.owner_url
    space = ns()
    flow = (await stub.CreateFlow(store_pb2.CreateFlowRequest(namespace=space, name="f"))).flow
    before = await sql(owner, "SELECT (SELECT count(*) FROM flows), "
                       "(SELECT count(*) FROM event_log), (SELECT count(*) FROM definitions)")
    event = common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED, payload_json="{}")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: stub.CreateFlow(store_pb2.CreateFlowRequest(namespace=ident, name="f")),
        lambda: stub.AppendEvents(store_pb2.AppendEventsRequest(
            namespace=space, flow_id=flow.flow_id, expected_version=0, command_id=ident,
            events=[event])),
        lambda: stub.AppendEvents(store_pb2.AppendEventsRequest(
            namespace=ident, flow_id=flow.flow_id, expected_version=0, command_id="c",
            events=[event])),
        lambda: stub.PutDefinitionVersion(store_pb2.PutDefinitionVersionRequest(
            namespace=space, name=ident, definition_json="{}", definition_hash="f" * 64)),
        lambda: stub.ListFlows(store_pb2.ListFlowsRequest(namespace=ident)),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await sql(owner, "SELECT (SELECT count(*) FROM flows), "
                      "(SELECT count(*) FROM event_log), (SELECT count(*) FROM definitions)")
    assert after == before
    await assert_intact(owner)


# -- the engine's API ---------------------------------------------------------------------------

GREET = {"id": "greet", "type": "hello.greet", "config": {"name": "world"}}
APPROVE = {"id": "approve", "type": "signal", "config": {"name": "approved"}}


async def until_waiting(client: FlowledgerClient, namespace: str, flow_id: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while (await client.describe_flow(namespace, flow_id)).status is not FlowStatus.WAITING:
        assert time.monotonic() < deadline, "the flow never waited for its signal"
        await asyncio.sleep(0.02)


async def payloads(services: Services, namespace: str, flow_id: str) -> dict[str, list[Any]]:
    """The flow's event payloads by event type, read from the store."""
    out: dict[str, list[Any]] = {}
    request = store_pb2.ReadEventsRequest(namespace=namespace, flow_id=flow_id)
    async for response in services.stub.ReadEvents(request):
        for e in response.events:
            name = common_pb2.EventType.Name(e.type)
            out.setdefault(name, []).append(json.loads(e.payload_json))
    return out


@pytest.mark.parametrize(
    "s", [s for s in NASTY if s], ids=[i for i, s in zip(IDS, NASTY, strict=True) if s]
)
async def test_every_engine_text_field_keeps_the_string(
    services: Services, client: FlowledgerClient, s: str
) -> None:
    space, name = ns(), "hostile"
    document = {"steps": [{**GREET, "config": {"name": s}}, APPROVE]}
    created = await client.create_definition(space, name, document, change_note=s, created_by=s)
    version = created.version.version
    await client.publish_definition(space, name, version, change_note=s, actor=s)
    stored = await client.get_definition(space, name, version)
    assert (stored.change_note, stored.created_by) == (s, s)
    assert [(h.change_note, h.actor) for h in stored.history] == [(s, s), (s, s)]

    # A flow: hostile input and starter, a hostile signal payload and sender.
    flow_input = hostile_json(s)
    started = await client.start_flow(space, name, flow_input, started_by=s)
    await until_waiting(client, space, started.flow_id)
    signal = {"s": s, s: s}
    await client.signal_flow(space, started.flow_id, "approved", signal, sent_by=s)
    view = await client.wait_for_flow(space, started.flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
    assert view.started_by == s
    recorded = await payloads(services, space, started.flow_id)
    assert s in strings(recorded["EVENT_TYPE_SIGNAL_RECEIVED"])
    outputs = {step.step_id: step.output_hashes for step in view.steps}
    fetched = await client.fetch_artifacts(space, [*outputs["greet"], *outputs["approve"]])
    assert sorted((a.payload for a in fetched.found), key=canonical_bytes) == sorted(
        [{"message": f"hello, {s}"}, signal], key=canonical_bytes
    )
    input_hash = recorded["EVENT_TYPE_FLOW_INITIALIZED"][0]["input_hash"]
    assert input_hash == content_hash(flow_input)
    assert [a.payload for a in (await client.fetch_artifacts(space, [input_hash])).found] == [
        flow_input
    ]

    # Another, cancelled with a hostile reason by a hostile canceller.
    other = await client.start_flow(space, name, None, started_by=s)
    await until_waiting(client, space, other.flow_id)
    await client.cancel_flow(space, other.flow_id, reason=s, cancelled_by=s)
    ended = await client.wait_for_flow(space, other.flow_id, within=BOUND_S)
    assert ended.status is FlowStatus.CANCELLED
    requested = (await payloads(services, space, other.flow_id))["EVENT_TYPE_FLOW_CANCEL_REQUESTED"]
    assert {s} <= strings(requested)
    listed = await client.list_flows(space, definition_name=name)
    assert {f.flow_id for f in listed.flows} == {started.flow_id, other.flow_id}
    await assert_intact(services.owner_url)
