"""The definition and lease RPCs over real gRPC, on both backends: answers and typed errors."""

from __future__ import annotations

import json

import grpc
import grpc.aio
import pytest

from flowledger.canonical import content_hash
from flowledger.errors import AlreadyExists, FailedPrecondition, NotFound
from flowledger.v1 import common_pb2, store_pb2
from tests.fixtures.store_server import RunningStore
from tests.store_service.helpers import append, create_flow, ev, failure, ns

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
    v2 = (await stub.PutDefinitionVersion(put_request(space))).version
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
