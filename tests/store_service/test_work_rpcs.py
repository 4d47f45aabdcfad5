"""The definition and lease RPCs over real gRPC, on both backends: answers and typed errors."""

from __future__ import annotations

import json
import uuid

import grpc
import grpc.aio
import pytest

from flowledger.canonical import content_hash
from flowledger.errors import AlreadyExists, FailedPrecondition, NotFound
from flowledger.v1 import common_pb2, store_pb2
from tests.fixtures.store_server import RunningStore
from tests.store_service.helpers import append, art, create_flow, ev, failure, ns

DRAFT = store_pb2.STORED_DEFINITION_STATE_DRAFT
PUBLISHED = store_pb2.STORED_DEFINITION_STATE_PUBLISHED
ARCHIVED = store_pb2.STORED_DEFINITION_STATE_ARCHIVED
HASH = content_hash(["seed", "split"])


def put_request(
    space: str,
    *,
    name: str = "chem",
    definition_json: str = '{"steps": [{"id": "seed"}, {"id": "split"}], "name": "chem"}',
    change_note: str = "",
    created_by: str = "",
    request_id: str = "",
) -> store_pb2.PutDefinitionVersionRequest:
    return store_pb2.PutDefinitionVersionRequest(
        namespace=space, name=name, definition_json=definition_json, definition_hash=HASH,
        change_note=change_note, created_by=created_by, request_id=request_id,
    )


async def test_definition_versions(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    first = await stub.PutDefinitionVersion(
        put_request(space, change_note="first", created_by="alice", request_id="r-1")
    )
    assert not first.existed
    v1 = first.version
    assert (v1.namespace, v1.name, v1.version, v1.state) == (space, "chem", 1, DRAFT)
    # Stored and returned in RFC 8785 canonical form.
    assert v1.definition_json == '{"name":"chem","steps":[{"id":"seed"},{"id":"split"}]}'
    assert v1.definition_hash == HASH
    assert (v1.change_note, v1.created_by) == ("first", "alice")
    assert v1.HasField("created_at")
    assert not v1.HasField("published_at")
    assert [(h.state, h.change_note, h.actor) for h in v1.history] == [(DRAFT, "first", "alice")]
    repeat = await stub.PutDefinitionVersion(
        put_request(space, change_note="first", created_by="alice", request_id="r-1")
    )
    assert repeat.existed
    assert repeat.version == v1
    # The same document without a request id is the latest version again: nothing is stored.
    same = await stub.PutDefinitionVersion(put_request(space))
    assert (same.existed, same.version) == (True, v1)
    other_document = '{"steps": [{"id": "seed"}, {"id": "split"}], "name": "chem", "note": 2}'
    v2 = (
        await stub.PutDefinitionVersion(put_request(space, definition_json=other_document))
    ).version
    assert v2.version == 2

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetStoredDefinitionVersion(
            store_pb2.GetStoredDefinitionVersionRequest(namespace=space, name="chem")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert failure(caught.value).reason == "DEFINITION_NOT_FOUND"

    published = await stub.TransitionDefinitionVersion(
        store_pb2.TransitionDefinitionVersionRequest(
            namespace=space, name="chem", version=1, to_state=PUBLISHED, from_states=[DRAFT],
            change_note="ship", actor="bob",
        )
    )
    assert published.version.state == PUBLISHED
    assert published.version.HasField("published_at")
    latest = await stub.GetStoredDefinitionVersion(
        store_pb2.GetStoredDefinitionVersionRequest(namespace=space, name="chem")
    )
    assert latest.version == published.version
    assert [h.state for h in latest.version.history] == [DRAFT, PUBLISHED]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TransitionDefinitionVersion(
            store_pb2.TransitionDefinitionVersionRequest(
                namespace=space, name="chem", version=2, to_state=PUBLISHED,
                from_states=[ARCHIVED],
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = failure(caught.value)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "TRANSITION_NOT_ALLOWED"
    assert error.metadata["current_state"] == "draft"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutDefinitionVersion(put_request(space, definition_json="{}", request_id="r-1"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(failure(caught.value), AlreadyExists)

    page = await stub.ListStoredDefinitionVersions(
        store_pb2.ListStoredDefinitionVersionsRequest(namespace=space, name="chem", page_size=1)
    )
    assert [v.version for v in page.versions] == [2]
    rest = await stub.ListStoredDefinitionVersions(
        store_pb2.ListStoredDefinitionVersionsRequest(
            namespace=space, name="chem", page_token=page.next_page_token
        )
    )
    assert [v.version for v in rest.versions] == [1]
    assert not rest.next_page_token
    await stub.PutDefinitionVersion(put_request(space, name="another"))
    every = await stub.ListStoredDefinitionVersions(
        store_pb2.ListStoredDefinitionVersionsRequest(namespace=space)
    )
    assert [(v.name, v.version) for v in every.versions] == [("another", 1), ("chem", 2)]
    assert json.loads(every.versions[1].definition_json)["name"] == "chem"


async def test_leases(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow = await create_flow(stub, space)
    await create_flow(stub, space, status=common_pb2.FLOW_STATUS_COMPLETED)
    claimed = await stub.ClaimFlows(
        store_pb2.ClaimFlowsRequest(owner="replica-a", limit=10, lease_ms=60_000,
                                    namespaces=[space])
    )
    assert [lease.flow.flow_id for lease in claimed.leases] == [flow.flow_id]
    lease = claimed.leases[0]
    assert lease.owner == "replica-a"
    assert lease.fencing_token >= 1
    assert lease.expires_at.ToDatetime() > lease.flow.updated_at.ToDatetime()
    again = await stub.ClaimFlows(
        store_pb2.ClaimFlowsRequest(owner="replica-b", limit=10, lease_ms=60_000,
                                    namespaces=[space], flow_ids=[flow.flow_id])
    )
    assert list(again.leases) == []

    await append(stub, space, flow.flow_id, 0, ev(n=1), fencing_token=lease.fencing_token)
    renewed = await stub.RenewLease(
        store_pb2.RenewLeaseRequest(namespace=space, flow_id=flow.flow_id, owner="replica-a",
                                    fencing_token=lease.fencing_token, lease_ms=120_000)
    )
    assert renewed.lease.fencing_token == lease.fencing_token
    assert renewed.lease.expires_at.ToDatetime() > lease.expires_at.ToDatetime()
    assert renewed.lease.flow.version == 1

    released = await stub.ReleaseLease(
        store_pb2.ReleaseLeaseRequest(namespace=space, flow_id=flow.flow_id,
                                      fencing_token=lease.fencing_token)
    )
    assert released.released
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(stub, space, flow.flow_id, 1, ev(n=2), fencing_token=lease.fencing_token)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure(caught.value).reason == "LEASE_LOST"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RenewLease(
            store_pb2.RenewLeaseRequest(namespace=space, flow_id=flow.flow_id, owner="replica-a",
                                        fencing_token=lease.fencing_token, lease_ms=1000)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure(caught.value).reason == "LEASE_LOST"

    taken = await stub.ClaimFlows(
        store_pb2.ClaimFlowsRequest(owner="replica-b", limit=1, lease_ms=60_000,
                                    flow_ids=[flow.flow_id])
    )
    assert taken.leases[0].fencing_token > lease.fencing_token
    stale = await stub.ReleaseLease(
        store_pb2.ReleaseLeaseRequest(namespace=space, flow_id=flow.flow_id,
                                      fencing_token=lease.fencing_token)
    )
    assert not stale.released
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReleaseLease(
            store_pb2.ReleaseLeaseRequest(namespace=ns(), flow_id=flow.flow_id, fencing_token=1)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(failure(caught.value), NotFound)


async def test_create_flow_with_a_lease(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    flow_id = str(uuid.uuid4())
    request = store_pb2.CreateFlowRequest(
        namespace=space, flow_id=flow_id, name="leased", lease_owner="replica-a", lease_ms=60_000
    )
    created = await stub.CreateFlow(request)
    assert not created.existed
    assert created.HasField("lease")
    assert (created.lease.owner, created.lease.flow.flow_id) == ("replica-a", flow_id)
    assert created.lease.fencing_token >= 1
    assert created.lease.expires_at.ToDatetime() > created.flow.created_at.ToDatetime()
    held = await stub.ClaimFlows(
        store_pb2.ClaimFlowsRequest(owner="replica-b", limit=1, lease_ms=60_000,
                                    flow_ids=[flow_id])
    )
    assert list(held.leases) == []
    token = created.lease.fencing_token
    await append(stub, space, flow_id, 0, ev(n=1), fencing_token=token)
    # The append that ends the flow takes the lease with it.
    await append(stub, space, flow_id, 1, ev(n=2), fencing_token=token,
                 new_status=common_pb2.FLOW_STATUS_COMPLETED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RenewLease(
            store_pb2.RenewLeaseRequest(namespace=space, flow_id=flow_id, owner="replica-a",
                                        fencing_token=token, lease_ms=1000)
        )
    assert failure(caught.value).reason == "LEASE_LOST"

    repeat = await stub.CreateFlow(request)
    assert repeat.existed
    assert not repeat.HasField("lease")


@pytest.mark.parametrize(
    ("owner", "lease_ms", "field"),
    [("", 60_000, "lease_owner"), ("a" * 129, 60_000, "lease_owner"), ("a", 99, "lease_ms"),
     ("a", 0, "lease_ms")],
)
async def test_create_flow_refuses_a_bad_lease(
    store_service: RunningStore, owner: str, lease_ms: int, field: str
) -> None:
    stub, space = store_service.stub, ns()
    flow_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateFlow(
            store_pb2.CreateFlowRequest(namespace=space, flow_id=flow_id, name="x",
                                        lease_owner=owner, lease_ms=lease_ms)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in failure(caught.value).violations] == [field]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_create_flow_with_its_first_append(store_service: RunningStore) -> None:
    stub, space = store_service.stub, ns()
    initial = store_pb2.AppendEventsRequest(
        command_id="init", events=[ev(n=1), ev(n=2)], artifacts=[art({"input": 1})],
        new_status=common_pb2.FLOW_STATUS_RUNNING,
    )
    created = await stub.CreateFlow(
        store_pb2.CreateFlowRequest(namespace=space, name="f", lease_owner="replica-a",
                                    lease_ms=60_000, initial_append=initial)
    )
    assert created.HasField("initial_append")
    assert (created.initial_append.first_version, created.initial_append.last_version) == (1, 2)
    assert (created.flow.version, created.flow.status) == (2, common_pb2.FLOW_STATUS_RUNNING)
    read = [e async for chunk in stub.ReadEvents(
        store_pb2.ReadEventsRequest(namespace=space, flow_id=created.flow.flow_id)
    ) for e in chunk.events]  # fmt: skip
    assert [(e.version, e.command_id, e.seq) for e in read] == [
        (1, "init", created.initial_append.seqs[0]), (2, "init", created.initial_append.seqs[1]),
    ]  # fmt: skip
    await append(stub, space, created.flow.flow_id, 2, ev(n=3),
                 fencing_token=created.lease.fencing_token)  # fmt: skip


@pytest.mark.parametrize(
    ("initial", "field"),
    [
        (store_pb2.AppendEventsRequest(command_id="c", events=[ev()], expected_version=3),
         "initial_append.expected_version"),
        (store_pb2.AppendEventsRequest(command_id="c", events=[ev()], fencing_token=4),
         "initial_append.fencing_token"),
        (store_pb2.AppendEventsRequest(command_id="c", events=[ev()], namespace="other"),
         "initial_append.namespace"),
        (store_pb2.AppendEventsRequest(command_id="c", events=[]), "initial_append.events"),
        (store_pb2.AppendEventsRequest(
            command_id="c", events=[common_pb2.NewEvent(type=ev().type, payload_json="[1]")]),
         "initial_append.events[0].payload_json"),
    ],
)
async def test_create_flow_refuses_a_bad_first_append(
    store_service: RunningStore, initial: store_pb2.AppendEventsRequest, field: str
) -> None:
    stub, space = store_service.stub, ns()
    flow_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateFlow(
            store_pb2.CreateFlowRequest(namespace=space, flow_id=flow_id, name="x",
                                        initial_append=initial)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in failure(caught.value).violations] == [field]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id=flow_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
