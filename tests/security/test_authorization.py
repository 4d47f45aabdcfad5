"""Authorization on the real engine: every role against every method of the table, tenant
isolation (NOT_FOUND, no existence oracle, nothing written), and the recorded actor."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format

from flowledger.canonical import content_hash
from flowledger.errors import NotFound
from flowledger.v1 import engine_pb2, worker_pb2
from flowledger_core.server.auth import Principal, Role, current_principal
from flowledger_core.server.auth_interceptor import AuthInterceptor
from flowledger_core.server.auth_policy import PERMISSIONS, check_namespace, stamp_actor
from flowledger_core.server.auth_settings import AuthSettings
from flowledger_core.server.auth_tokens import Authenticator
from tests.engine_service.api.conftest import HELLO_DOCUMENT
from tests.fixtures.store_server import wait_until
from tests.security.helpers import (
    Keys,
    Outcome,
    Pki,
    SecureStack,
    bearer,
    call,
    engine,
    request_class,
    secure_stack,
    write_token_file,
)

DENIED = grpc.StatusCode.PERMISSION_DENIED
RPC_METHODS = sorted(m for m in PERMISSIONS if "/flowledger.v1." in m)


def test_every_served_method_is_in_the_table() -> None:
    """A new RPC must get a row (it is refused to everyone until it does)."""
    served = {
        f"/{service.full_name}/{method.name}"
        for service in (engine_pb2.DESCRIPTOR.services_by_name["EngineService"],
                        worker_pb2.DESCRIPTOR.services_by_name["WorkerService"])
        for method in service.methods
    }
    assert served == set(RPC_METHODS)


def test_admin_may_call_everything_and_roles_are_as_documented() -> None:
    assert all(Role.ADMIN in roles for roles in PERMISSIONS.values())
    viewer = {m.rsplit("/", 1)[1] for m, r in PERMISSIONS.items() if Role.VIEWER in r}
    assert viewer == {"GetDefinitionVersion", "ListDefinitions", "DescribeFlow", "ListFlowRuns",
                      "WatchFlow", "FetchArtifacts", "VerifyFlow", "ServerReflectionInfo"}
    worker = {m.rsplit("/", 1)[1] for m, r in PERMISSIONS.items() if Role.WORKER in r}
    assert worker == {"PollTask", "CompleteTask", "FailTask", "Heartbeat",
                      "ServerReflectionInfo"}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("method", RPC_METHODS)
async def test_role_against_method(stack: SecureStack, keys: Keys, role: Role, method: str) -> None:
    # Every request of the matrix has a namespace; ParseDict sets it without a keyword argument
    # that the generic Message type does not declare.
    request = json_format.ParseDict({"namespace": "ns-matrix"}, request_class(method)())
    token = keys.mint(f"matrix-{role.value}", role.value, ["ns-matrix"])
    outcome = await call(stack.channel, method, request, token)
    if role in PERMISSIONS[method]:
        # Admitted: whatever the (empty) request gets, it is not a refusal of the caller.
        assert outcome.code not in (DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.UNIMPLEMENTED), outcome
    else:
        assert (outcome.code, outcome.reason) == (DENIED, "ROLE_NOT_ALLOWED"), outcome


# -- tenant isolation ----------------------------------------------------------------------------


class Tenants:
    """ns-b holds a definition and a completed flow (made by an admin of every namespace);
    the tokens belong to ns-a."""

    def __init__(self, keys: Keys) -> None:
        self.admin = keys.mint("root", "admin", "*")
        self.viewer = keys.mint("alice", "viewer", ["ns-a"])
        self.manager = keys.mint("bob", "manager", ["ns-a", "ns-c"])
        self.flow_id = ""
        self.hashes: list[str] = []


@pytest.fixture(scope="module")
async def tenants(stack: SecureStack, keys: Keys) -> Tenants:
    t = Tenants(keys)
    ch = stack.channel
    created = await call(ch, engine("CreateDefinitionVersion"),
                         engine_pb2.CreateDefinitionVersionRequest(
                             namespace="ns-b", name="hello",
                             document=__import__("json").dumps(HELLO_DOCUMENT)), t.admin)
    assert created.code == grpc.StatusCode.OK, created
    published = await call(ch, engine("PublishDefinitionVersion"),
                           engine_pb2.PublishDefinitionVersionRequest(
                               namespace="ns-b", name="hello", version=1), t.admin)
    assert published.code == grpc.StatusCode.OK, published
    started = await call(ch, engine("StartFlow"), engine_pb2.StartFlowRequest(
        namespace="ns-b", definition_name="hello", input_json='{"who": "b"}'), t.admin)
    assert started.code == grpc.StatusCode.OK, started
    t.flow_id = started.response.flow_id

    async def done() -> bool:
        view = await call(ch, engine("DescribeFlow"), engine_pb2.DescribeFlowRequest(
            namespace="ns-b", flow_id=t.flow_id), t.admin)
        t.hashes = [h for s in view.response.flow.steps for h in s.output_hashes]
        return bool(view.response.flow.flow_fingerprint)

    await wait_until(done, "the ns-b flow to complete")
    return t


def _foreign_requests(namespace: str, flow_id: str, hashes: list[str]) -> dict[str, object]:
    return {
        "DescribeFlow": engine_pb2.DescribeFlowRequest(namespace=namespace, flow_id=flow_id),
        "VerifyFlow": engine_pb2.VerifyFlowRequest(namespace=namespace, flow_id=flow_id),
        "WatchFlow": engine_pb2.WatchFlowRequest(namespace=namespace, flow_id=flow_id),
        "ListFlowRuns": engine_pb2.ListFlowRunsRequest(namespace=namespace),
        "GetDefinitionVersion": engine_pb2.GetDefinitionVersionRequest(
            namespace=namespace, name="hello"),
        "ListDefinitions": engine_pb2.ListDefinitionsRequest(namespace=namespace),
        "FetchArtifacts": engine_pb2.FetchArtifactsRequest(namespace=namespace, hashes=hashes),
        "SignalFlow": engine_pb2.SignalFlowRequest(
            namespace=namespace, flow_id=flow_id, name="go", payload_json="{}"),
        "CancelFlow": engine_pb2.CancelFlowRequest(namespace=namespace, flow_id=flow_id),
        "TerminateFlow": engine_pb2.TerminateFlowRequest(namespace=namespace, flow_id=flow_id),
        "BranchFlow": engine_pb2.BranchFlowRequest(
            namespace=namespace, flow_id=flow_id, at_step="shout"),
        "StartFlow": engine_pb2.StartFlowRequest(namespace=namespace, definition_name="hello"),
        "CreateDefinitionVersion": engine_pb2.CreateDefinitionVersionRequest(
            namespace=namespace, name="hello", document="{}"),
    }


FOREIGN = ["DescribeFlow", "VerifyFlow", "WatchFlow", "ListFlowRuns", "GetDefinitionVersion",
           "ListDefinitions", "FetchArtifacts", "SignalFlow", "CancelFlow", "TerminateFlow",
           "BranchFlow", "StartFlow", "CreateDefinitionVersion"]


def _shape(outcome: Outcome, namespace: str) -> tuple[grpc.StatusCode, str, str]:
    return outcome.code, outcome.reason, outcome.message.replace(namespace, "<ns>")


@pytest.mark.parametrize("name", FOREIGN)
async def test_another_namespace_is_not_found_and_learns_nothing(
    stack: SecureStack, tenants: Tenants, name: str
) -> None:
    token = tenants.manager  # manager of ns-a and ns-c: admitted to every method here
    existing = _foreign_requests("ns-b", tenants.flow_id, tenants.hashes)[name]
    empty = _foreign_requests("ns-nowhere", str(uuid.uuid4()), ["0" * 64])[name]
    seen = await call(stack.channel, engine(name), existing, token)  # type: ignore[arg-type]
    unseen = await call(stack.channel, engine(name), empty, token)  # type: ignore[arg-type]
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "NAMESPACE_NOT_FOUND")
    # The same answer whether or not something exists there.
    assert _shape(seen, "ns-b") == _shape(unseen, "ns-nowhere")


async def test_refused_writes_to_another_namespace_write_nothing(
    stack: SecureStack, tenants: Tenants
) -> None:
    async def state() -> tuple[int, int, int]:
        view = await call(stack.channel, engine("DescribeFlow"), engine_pb2.DescribeFlowRequest(
            namespace="ns-b", flow_id=tenants.flow_id), tenants.admin)
        flows = await call(stack.channel, engine("ListFlowRuns"),
                           engine_pb2.ListFlowRunsRequest(namespace="ns-b"), tenants.admin)
        defs = await call(stack.channel, engine("ListDefinitions"),
                          engine_pb2.ListDefinitionsRequest(namespace="ns-b", name="hello"),
                          tenants.admin)
        return (view.response.flow.flow.version, len(flows.response.flows),
                len(defs.response.versions))

    before = await state()
    for name in ("SignalFlow", "CancelFlow", "TerminateFlow", "BranchFlow", "StartFlow",
                 "CreateDefinitionVersion"):
        request = _foreign_requests("ns-b", tenants.flow_id, [])[name]
        outcome = await call(stack.channel, engine(name), request, tenants.manager)  # type: ignore[arg-type]
        assert outcome.code == grpc.StatusCode.NOT_FOUND
    assert await state() == before


async def test_a_token_sees_its_own_namespace_and_a_star_token_every_one(
    stack: SecureStack, tenants: Tenants
) -> None:
    own = await call(stack.channel, engine("ListFlowRuns"),
                     engine_pb2.ListFlowRunsRequest(namespace="ns-a"), tenants.viewer)
    assert own.code == grpc.StatusCode.OK
    everywhere = await call(stack.channel, engine("ListFlowRuns"),
                            engine_pb2.ListFlowRunsRequest(namespace="ns-b"), tenants.admin)
    assert [f.flow_id for f in everywhere.response.flows] == [tenants.flow_id]


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_another_namespaces_artifacts_are_not_found_by_their_hashes(
    pki: Pki, keys: Keys, token_file: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """Artifacts are stored once for every namespace, but a hash taken from another tenant's
    flow (its input, its step outputs) reads nothing: missing, as a hash never stored."""
    url = request.getfixturevalue("migrated_database_url") if backend == "postgres" else ""
    admin = keys.mint("root", "admin", "*")
    viewer = keys.mint("alice", "viewer", ["ns-a"])
    secret = {"who": "b", "secret": uuid.uuid4().hex}
    async with secure_stack(pki, keys, token_file, database_url=url) as stack:
        ch = stack.channel
        for method, req in [
            ("CreateDefinitionVersion", engine_pb2.CreateDefinitionVersionRequest(
                namespace="ns-b", name="hello", document=json.dumps(HELLO_DOCUMENT))),
            ("PublishDefinitionVersion", engine_pb2.PublishDefinitionVersionRequest(
                namespace="ns-b", name="hello", version=1)),
        ]:  # fmt: skip
            assert (await call(ch, engine(method), req, admin)).code == grpc.StatusCode.OK
        started = await call(ch, engine("StartFlow"), engine_pb2.StartFlowRequest(
            namespace="ns-b", definition_name="hello", input_json=json.dumps(secret)), admin)
        assert started.code == grpc.StatusCode.OK, started
        outputs: list[str] = []

        async def done() -> bool:
            view = await call(ch, engine("DescribeFlow"), engine_pb2.DescribeFlowRequest(
                namespace="ns-b", flow_id=started.response.flow_id), admin)
            outputs[:] = [h for s in view.response.flow.steps for h in s.output_hashes]
            return bool(view.response.flow.flow_fingerprint)

        await wait_until(done, "the ns-b flow to complete")
        theirs = [content_hash(secret), *dict.fromkeys(outputs)]
        own = await call(ch, engine("FetchArtifacts"), engine_pb2.FetchArtifactsRequest(
            namespace="ns-b", hashes=theirs), admin)
        assert sorted(a.hash for a in own.response.artifacts) == sorted(theirs)

        stolen = await call(ch, engine("FetchArtifacts"), engine_pb2.FetchArtifactsRequest(
            namespace="ns-a", hashes=theirs), viewer)
        never = [content_hash({"never": uuid.uuid4().hex}) for _ in theirs]
        unseen = await call(ch, engine("FetchArtifacts"), engine_pb2.FetchArtifactsRequest(
            namespace="ns-a", hashes=never), viewer)
        assert stolen.code == unseen.code == grpc.StatusCode.OK
        assert list(stolen.response.artifacts) == list(unseen.response.artifacts) == []
        assert list(stolen.response.missing) == theirs
        assert list(unseen.response.missing) == never


def test_an_empty_namespace_is_invalid_not_a_wildcard() -> None:
    viewer = Principal("v", Role.VIEWER, frozenset({"a"}), "jwt")
    admin = Principal("r", Role.ADMIN, None, "jwt")
    for who in (viewer, admin):
        with pytest.raises(Exception, match="namespace: is required"):
            check_namespace(who, engine_pb2.ListFlowRunsRequest(namespace=""))
    with pytest.raises(NotFound):
        check_namespace(viewer, worker_pb2.PollTaskRequest(namespace="b"))


# -- the recorded actor --------------------------------------------------------------------------


async def test_the_subject_is_recorded_not_the_callers_free_text(
    stack: SecureStack, keys: Keys
) -> None:
    token = keys.mint("carol@example.com", "manager", ["ns-actor"])
    ch = stack.channel
    created = await call(ch, engine("CreateDefinitionVersion"),
                         engine_pb2.CreateDefinitionVersionRequest(
                             namespace="ns-actor", name="hello", created_by="mallory",
                             document=__import__("json").dumps(HELLO_DOCUMENT)), token)
    assert created.response.version.created_by == "carol@example.com"
    published = await call(ch, engine("PublishDefinitionVersion"),
                           engine_pb2.PublishDefinitionVersionRequest(
                               namespace="ns-actor", name="hello", version=1, actor="mallory"),
                           token)
    assert [h.actor for h in published.response.version.history][-1] == "carol@example.com"
    started = await call(ch, engine("StartFlow"), engine_pb2.StartFlowRequest(
        namespace="ns-actor", definition_name="hello", started_by="mallory"), token)
    view = await call(ch, engine("DescribeFlow"), engine_pb2.DescribeFlowRequest(
        namespace="ns-actor", flow_id=started.response.flow_id), token)
    assert view.response.flow.started_by == "carol@example.com"


def test_every_actor_field_of_the_contract_is_stamped() -> None:
    who = Principal("dave", Role.ADMIN, None, "token")
    requests = [
        engine_pb2.CreateDefinitionVersionRequest(created_by="x"),
        engine_pb2.PublishDefinitionVersionRequest(actor="x"),
        engine_pb2.ArchiveDefinitionVersionRequest(actor="x"),
        engine_pb2.RollbackDefinitionRequest(actor="x"),
        engine_pb2.StartFlowRequest(started_by="x"),
        engine_pb2.BranchFlowRequest(started_by="x"),
        engine_pb2.SignalFlowRequest(sent_by="x"),
        engine_pb2.CancelFlowRequest(cancelled_by="x"),
        engine_pb2.TerminateFlowRequest(terminated_by="x"),
    ]
    for request in requests:
        stamp_actor(who, request)
        assert "x" not in [v for _, v in request.ListFields()], request


# -- the principal as handlers see it ------------------------------------------------------------


async def test_each_call_sees_its_own_principal(tmp_path: Path) -> None:
    """A tiny server whose handler answers current_principal(): concurrent calls of different
    subjects each see their own (the context does not leak between calls)."""
    token_file = write_token_file(tmp_path / "t.yaml", [
        (f"token-{i}", f"subject-{i}", "viewer", ["ns"]) for i in range(20)
    ])
    interceptor = AuthInterceptor(Authenticator(AuthSettings(token_file=token_file)))
    gate = asyncio.Event()
    arrived = 0

    async def describe(
        request: engine_pb2.DescribeFlowRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> engine_pb2.DescribeFlowResponse:
        nonlocal arrived
        arrived += 1
        if arrived == 20:
            gate.set()
        await gate.wait()  # all calls are in flight together before any answers
        who = current_principal()
        assert who is not None
        return engine_pb2.DescribeFlowResponse(flow=engine_pb2.FlowView(started_by=who.subject))

    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "flowledger.v1.EngineService",
        {"DescribeFlow": grpc.unary_unary_rpc_method_handler(
            describe, engine_pb2.DescribeFlowRequest.FromString,
            engine_pb2.DescribeFlowResponse.SerializeToString)},
    )])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary(
                engine("DescribeFlow"),
                request_serializer=engine_pb2.DescribeFlowRequest.SerializeToString,
                response_deserializer=engine_pb2.DescribeFlowResponse.FromString,
            )
            replies = await asyncio.gather(*(
                stub(engine_pb2.DescribeFlowRequest(namespace="ns", flow_id="f"),
                     metadata=bearer(f"token-{i}"), timeout=10)
                for i in range(20)
            ))
        assert [r.flow.started_by for r in replies] == [f"subject-{i}" for i in range(20)]
        assert current_principal() is None
    finally:
        await server.stop(0)
