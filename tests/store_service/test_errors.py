"""Bad input for every RPC: the right status code, BadRequest field paths, nothing written.

Validation runs before the storage port, so the per-RPC table runs on the memory backend; the
errors that come from stored state (NOT_FOUND, VERSION_CONFLICT, ...) run on both backends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_status import rpc_status as grpc_rpc_status

from flowledger import rpc_status
from flowledger.errors import (
    AlreadyExists,
    FailedPrecondition,
    FlowledgerError,
    InternalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    VersionConflict,
)
from flowledger.rpc_status import ERROR_DOMAIN
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core.domain import Flow
from store_service.adapters.memory import MemoryEventStore
from store_service.grpc_api import NOT_YET_SERVED
from store_service.settings import Limits
from tests.fixtures.store_server import RunningStore, running_store, store_settings
from tests.store_service.helpers import (
    STARTED,
    append,
    art,
    create_flow,
    ev,
    failure,
    field_paths,
    ns,
    read_all,
)


@pytest.fixture
async def memory_service() -> AsyncIterator[RunningStore]:
    store = MemoryEventStore()
    async with running_store(store) as running:
        yield running
    await store.close()


async def call(running: RunningStore, rpc: str, request: Message) -> Any:
    """Invoke ``rpc``; streams are read to the end."""
    method = getattr(running.stub, rpc)
    if rpc in ("ReadEvents", "Subscribe"):
        return [response async for response in method(request)]
    return await method(request)


async def failing_call(running: RunningStore, rpc: str, request: Message) -> FlowledgerError:
    """Invoke ``rpc``, which must fail; the error it failed with. AppendStream sends
    ``request`` (an AppendEventsRequest) as its one command, whose answer must be an error: the
    stream itself ends OK."""
    if rpc != "AppendStream":
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(running, rpc, request)
        return failure(caught.value)
    assert isinstance(request, store_pb2.AppendEventsRequest)
    answers = [a async for a in running.stub.AppendStream(
        iter([store_pb2.AppendStreamRequest(request_id=1, append=request)])
    )]
    assert [(a.request_id, a.WhichOneof("outcome")) for a in answers] == [(1, "error")]
    return rpc_status.from_status(status_pb2.Status.FromString(answers[0].error))


@dataclass(frozen=True)
class Case:
    rpc: str
    build: Callable[[str, str], Message]  # (namespace, existing flow id) -> request
    fields: frozenset[str]


BAD_HASH = "ABC"
UPPER_UUID = str(uuid.uuid4()).upper()

def bad_append(space: str, flow_id: str) -> store_pb2.AppendEventsRequest:
    return store_pb2.AppendEventsRequest(
        namespace=space, flow_id=flow_id, expected_version=-1, command_id="bad id!",
        events=[
            common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_UNSPECIFIED, payload_json="{"),
            common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED, payload_json="[]"),
            common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED,
                                payload_json='{"a": "nul \\u0000"}'),
            common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED, payload_json='{"n": NaN}'),
        ],
        artifacts=[
            common_pb2.NewArtifact(hash=BAD_HASH, kind="json", payload_json="{}", event_index=9),
            common_pb2.NewArtifact(hash="0" * 64, kind="", payload_json='{"x": 1}'),
        ],
        new_status=common_pb2.FlowStatus.ValueType(42),
    )


BAD_APPEND_FIELDS = frozenset({
    "expected_version", "command_id", "events[0].type", "events[0].payload_json",
    "events[1].payload_json", "events[2].payload_json", "events[3].payload_json",
    "artifacts[0].hash", "artifacts[0].event_index", "artifacts[1].kind",
    "artifacts[1].hash", "new_status",
})

CASES = {
    "CreateFlow": Case("CreateFlow", lambda space, _: store_pb2.CreateFlowRequest(
        namespace=space, flow_id="not-a-uuid", name="x" * 300, metadata_json="[1]",
        status=common_pb2.FlowStatus.ValueType(99),
    ), frozenset({"flow_id", "name", "metadata_json", "status"})),
    "GetFlow": Case("GetFlow", lambda space, _: store_pb2.GetFlowRequest(
        namespace="bad namespace", flow_id=UPPER_UUID,
    ), frozenset({"namespace", "flow_id"})),
    "ListFlows": Case("ListFlows", lambda space, _: store_pb2.ListFlowsRequest(
        namespace=space, statuses=[common_pb2.FLOW_STATUS_UNSPECIFIED], page_size=5000,
        parent_flow_id="parent",
    ), frozenset({"statuses[0]", "page_size", "parent_flow_id"})),
    "AppendEvents": Case("AppendEvents", lambda space, flow_id: bad_append(space, flow_id),
                         BAD_APPEND_FIELDS),
    # Answered in the command's ``error`` (see failing_call), with AppendEvents' field paths.
    "AppendStream": Case("AppendStream", lambda space, flow_id: bad_append(space, flow_id),
                         BAD_APPEND_FIELDS),
    "ReadEvents": Case("ReadEvents", lambda space, flow_id: store_pb2.ReadEventsRequest(
        namespace=space, flow_id=flow_id, after_version=-1, chunk_size=20_000,
    ), frozenset({"after_version", "chunk_size"})),
    "CountSteps": Case("CountSteps", lambda space, _: store_pb2.CountStepsRequest(
        namespace=space, flow_id="",
    ), frozenset({"flow_id"})),
    "Subscribe": Case("Subscribe", lambda space, _: store_pb2.SubscribeRequest(
        namespace=space, types=[common_pb2.EVENT_TYPE_UNSPECIFIED], chunk_size=-1,
    ), frozenset({"types[0]", "chunk_size"})),
    "GetArtifacts": Case("GetArtifacts", lambda space, _: store_pb2.GetArtifactsRequest(
        namespace=space, hashes=["0" * 64, "xyz"],
    ), frozenset({"hashes[1]"})),
    "CreateBranch": Case("CreateBranch", lambda space, flow_id: store_pb2.CreateBranchRequest(
        namespace=space, parent_flow_id=flow_id, fork_version=-1, metadata_json="nope",
        flow_id=flow_id,
    ), frozenset({"fork_version", "metadata_json", "flow_id"})),
    "DeleteBranch": Case("DeleteBranch", lambda space, flow_id: store_pb2.DeleteBranchRequest(
        namespace=space, flow_id=flow_id, reason="bad \x00 reason", deleted_by="x" * 2000,
    ), frozenset({"reason", "deleted_by"})),
    "PruneFlow": Case("PruneFlow", lambda space, flow_id: store_pb2.PruneFlowRequest(
        namespace=space, flow_id=flow_id, keep_through_version=5, expected_version=1,
        command_id="",
    ), frozenset({"keep_through_version", "command_id"})),
    "SaveSnapshot": Case("SaveSnapshot", lambda space, flow_id: store_pb2.SaveSnapshotRequest(
        namespace=space, flow_id=flow_id, version=-1, state_json="NaN",
    ), frozenset({"version", "state_json"})),
    "LoadSnapshot": Case("LoadSnapshot", lambda space, flow_id: store_pb2.LoadSnapshotRequest(
        namespace=space, flow_id=flow_id, max_version=-1,
    ), frozenset({"max_version"})),
    "PutDefinitionVersion": Case("PutDefinitionVersion", lambda space, _:
        store_pb2.PutDefinitionVersionRequest(
            namespace=space, name="bad name!", definition_json="[1]", definition_hash=BAD_HASH,
            change_note="nul \x00", request_id="bad id!",
        ), frozenset({"name", "definition_json", "definition_hash", "change_note", "request_id"})),
    "GetStoredDefinitionVersion": Case("GetStoredDefinitionVersion", lambda space, _:
        store_pb2.GetStoredDefinitionVersionRequest(namespace=space, name="", version=-1),
        frozenset({"name", "version"})),
    "ListStoredDefinitionVersions": Case("ListStoredDefinitionVersions", lambda space, _:
        store_pb2.ListStoredDefinitionVersionsRequest(
            namespace=space, name="x" * 129, page_size=5000,
        ), frozenset({"name", "page_size"})),
    "TransitionDefinitionVersion": Case("TransitionDefinitionVersion", lambda space, _:
        store_pb2.TransitionDefinitionVersionRequest(
            namespace=space, name="chem", version=0,
            to_state=store_pb2.STORED_DEFINITION_STATE_UNSPECIFIED,
            from_states=[store_pb2.StoredDefinitionState.ValueType(99)],
        ), frozenset({"version", "to_state", "from_states[0]"})),
    "ClaimFlows": Case("ClaimFlows", lambda space, _: store_pb2.ClaimFlowsRequest(
        owner="", limit=101, lease_ms=99, namespaces=[space, "bad ns"], flow_ids=["nope"],
    ), frozenset({"owner", "limit", "lease_ms", "namespaces[1]", "flow_ids[0]"})),
    "RenewLease": Case("RenewLease", lambda space, flow_id: store_pb2.RenewLeaseRequest(
        namespace=space, flow_id=flow_id, owner="", fencing_token=0, lease_ms=600_001,
    ), frozenset({"owner", "fencing_token", "lease_ms"})),
    "ReleaseLease": Case("ReleaseLease", lambda space, _: store_pb2.ReleaseLeaseRequest(
        namespace=space, flow_id=UPPER_UUID, fencing_token=-1,
    ), frozenset({"flow_id", "fencing_token"})),
    "GetLimits": Case("GetLimits", lambda space, _: store_pb2.GetLimitsRequest(
        namespace=f"{space} and spaces",
    ), frozenset({"namespace"})),
}


def test_every_served_rpc_has_a_bad_input_case() -> None:
    methods = store_pb2.DESCRIPTOR.services_by_name["StoreService"].methods_by_name
    assert set(CASES) == set(methods) - NOT_YET_SERVED


async def snapshot_of_state(running: RunningStore, space: str, flow_id: str) -> Any:
    """What a failed call must not change: the namespace's flows and the flow's log."""
    flows = await running.stub.ListFlows(
        store_pb2.ListFlowsRequest(namespace=space, include_deleted=True)
    )
    loaded = await running.stub.LoadSnapshot(
        store_pb2.LoadSnapshotRequest(namespace=space, flow_id=flow_id)
    )
    events = await read_all(running.stub, space, flow_id)
    return (
        [(f.flow_id, f.version, f.generation, f.deleted, f.status) for f in flows.flows],
        loaded.found,
        [(e.seq, e.version) for e in events],
    )


@pytest.mark.parametrize("rpc", sorted(CASES))
async def test_bad_input_is_invalid_argument_naming_every_field(
    memory_service: RunningStore, rpc: str
) -> None:
    case = CASES[rpc]
    space = ns()
    flow = await create_flow(memory_service.stub, space)
    await append(memory_service.stub, space, flow.flow_id, 0, ev(n=1))
    before = await snapshot_of_state(memory_service, space, flow.flow_id)

    error = await failing_call(memory_service, rpc, case.build(space, flow.flow_id))

    assert rpc_status.grpc_code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error, InvalidArgument)
    assert {v.field for v in error.violations} == case.fields
    assert all(v.description for v in error.violations)
    # The message names fields too, for people reading logs.
    assert sorted(case.fields)[0] in error.message or len(case.fields) > 3
    assert await snapshot_of_state(memory_service, space, flow.flow_id) == before


async def test_append_stream_answers_a_bad_command_and_goes_on(
    store_service: RunningStore,
) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    good = store_pb2.AppendEventsRequest(
        namespace=space, flow_id=flow.flow_id, expected_version=0, command_id="good",
        events=[ev(n=1)],
    )
    answers = [a async for a in stub.AppendStream(iter([
        store_pb2.AppendStreamRequest(request_id=1, append=bad_append(space, flow.flow_id)),
        store_pb2.AppendStreamRequest(request_id=2, append=store_pb2.AppendEventsRequest(
            namespace=space, flow_id="nope", expected_version=0, command_id="c", events=[ev()],
        )),
    ]))]
    # Both bad commands answered; the stream ended OK after them, nothing written.
    assert sorted(a.request_id for a in answers) == [1, 2]
    for answer in answers:
        assert answer.WhichOneof("outcome") == "error"
        status = status_pb2.Status.FromString(answer.error)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        error = rpc_status.from_status(status)
        assert isinstance(error, InvalidArgument)
        expected = BAD_APPEND_FIELDS if answer.request_id == 1 else {"flow_id"}
        assert {v.field for v in error.violations} == expected
    assert await read_all(stub, space, flow.flow_id) == []

    call = stub.AppendStream()
    try:
        await call.write(store_pb2.AppendStreamRequest(
            request_id=1, append=bad_append(space, flow.flow_id)
        ))
        first = await call.read()
        assert isinstance(first, store_pb2.AppendStreamResponse)
        assert isinstance(
            rpc_status.from_status(status_pb2.Status.FromString(first.error)), InvalidArgument
        )
        await call.write(store_pb2.AppendStreamRequest(request_id=1, append=good))
        second = await call.read()
        assert isinstance(second, store_pb2.AppendStreamResponse)
        assert second.WhichOneof("outcome") == "result"
        assert (second.request_id, second.result.last_version) == (1, 1)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()
    assert [e.command_id for e in await read_all(stub, space, flow.flow_id)] == ["good"]


async def test_status_details_hold_error_info_and_bad_request(
    memory_service: RunningStore,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await memory_service.stub.GetFlow(store_pb2.GetFlowRequest(namespace="", flow_id=""))
    status = grpc_rpc_status.from_call(caught.value)
    assert status is not None
    type_names = [d.TypeName() for d in status.details]
    assert type_names == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    error = failure(caught.value)
    assert error.reason == "INVALID_ARGUMENT"
    assert ERROR_DOMAIN == "flowledger.dev"


async def test_limits_are_resource_exhausted() -> None:
    limits = Limits(
        max_payload_bytes=1024, max_message_bytes=1024 + 64 * 1024 + 4096,
        max_events_per_append=3, max_artifacts_per_append=1,
    )
    store = MemoryEventStore()
    async with running_store(store, store_settings(limits=limits)) as running:
        space = ns()
        flow = await create_flow(running.stub, space)
        big = '{"blob": "' + "x" * 2000 + '"}'
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await append(
                running.stub, space, flow.flow_id, 0,
                ev(n=1), ev(n=2), common_pb2.NewEvent(type=STARTED, payload_json=big), ev(n=4),
                artifacts=[art({"a": 1}), art({"b": 2})],
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        error = failure(caught.value)
        assert isinstance(error, ResourceExhausted)
        assert {"events", "events[2].payload_json", "artifacts"} <= field_paths(caught.value)
        assert error.metadata["limit"] == "max_events_per_append"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.GetArtifacts(
                store_pb2.GetArtifactsRequest(namespace=space, hashes=["0" * 64] * 1001)
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert field_paths(caught.value) == {"hashes"}

        # A message past the server's limit never reaches the handler: gRPC refuses it.
        huge = common_pb2.NewEvent(type=STARTED, payload_json='{"x": "' + "y" * 100_000 + '"}')
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await append(running.stub, space, flow.flow_id, 0, huge)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await running.stub.GetFlow(
            store_pb2.GetFlowRequest(namespace=space, flow_id=flow.flow_id)
        )).flow.version == 0
    await store.close()


# -- errors decided by the stored state (both backends) -------------------------------------------


async def test_unknown_flow_is_not_found(store_service: RunningStore) -> None:
    space, missing = ns(), str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store_service.stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=missing))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(failure(caught.value), NotFound)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all(store_service.stub, space, missing)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stale_expected_version_is_aborted_with_current_version(
    store_service: RunningStore,
) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await append(stub, space, flow.flow_id, 0, ev(n=1), ev(n=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, flow.flow_id, 1, ev(n=3))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    error = failure(caught.value)
    assert isinstance(error, VersionConflict)
    assert error.reason == "VERSION_CONFLICT"
    assert (error.current_version, error.expected_version) == (2, 1)
    assert error.metadata["current_version"] == "2"
    assert len(await read_all(stub, space, flow.flow_id)) == 2

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PruneFlow(store_pb2.PruneFlowRequest(
            namespace=space, flow_id=flow.flow_id, keep_through_version=1, expected_version=1,
            command_id="p",
        ))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert failure(caught.value).metadata["current_version"] == "2"


async def test_state_conflicts(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space, name="one")
    await append(stub, space, flow.flow_id, 0, ev(n=1))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_flow(stub, space, flow_id=flow.flow_id, name="another")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(failure(caught.value), AlreadyExists)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateBranch(store_pb2.CreateBranchRequest(
            namespace=space, parent_flow_id=flow.flow_id, fork_version=5,
        ))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == {"fork_version"}

    branch = await stub.CreateBranch(store_pb2.CreateBranchRequest(
        namespace=space, parent_flow_id=flow.flow_id, fork_version=1,
    ))
    await stub.DeleteBranch(
        store_pb2.DeleteBranchRequest(namespace=space, flow_id=branch.flow.flow_id)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, branch.flow.flow_id, 1, ev(n=2))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(failure(caught.value), FailedPrecondition)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListFlows(store_pb2.ListFlowsRequest(namespace=space, page_token="garbage"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == {"page_token"}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(store_service, "Subscribe",
                   store_pb2.SubscribeRequest(namespace=space, after_cursor="not-a-cursor"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == {"after_cursor"}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SaveSnapshot(store_pb2.SaveSnapshotRequest(
            namespace=space, flow_id=flow.flow_id, version=7, state_json="{}",
        ))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_paths(caught.value) == {"version"}


class _BrokenStore(MemoryEventStore):
    """A backend with a bug: a real backend cannot be made to raise an unexpected error on
    demand, so this one test uses a double."""

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        raise RuntimeError("secret internals: password=hunter2")


async def test_unexpected_errors_are_internal_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _BrokenStore()
    async with running_store(store) as running:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.GetFlow(
                store_pb2.GetFlowRequest(namespace="ns", flow_id=str(uuid.uuid4()))
            )
    await store.close()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert isinstance(failure(caught.value), InternalError)
    assert "hunter2" not in (caught.value.details() or "")
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)
