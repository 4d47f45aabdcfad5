"""GrpcEventStore's definition and lease methods against the real store service on loopback.

As in ``test_store_client.py``: each case talks gRPC to the store service in process, on the
memory backend and on Postgres, and compares with what the backend itself answers. The fault
cases hold a reply back (:class:`~tests.fixtures.gated_store.GatedStore`) and cut the connection
between "applied" and "answered".
"""

from __future__ import annotations

import asyncio

import pytest

from engine_service.store_client.client import GrpcEventStore
from flowledger.canonical import canonical_bytes
from flowledger.errors import AlreadyExists, FailedPrecondition, NotFound
from flowledger_core.domain import (
    Append,
    ClaimRequest,
    DefinitionState,
    DefinitionTransitionCommand,
    NewDefinitionVersion,
    NewFlow,
    Page,
)
from flowledger_core.ports import EventStore
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_client import BOUND
from tests.fixtures.tcp_proxy import TcpProxy
from tests.store.helpers import ev

DOC = canonical_bytes({"name": "chem", "steps": [{"id": "seed", "type": "chem.seed"}]}).decode()
HASH = "c" * 64


DOC_2 = canonical_bytes({"name": "chem", "steps": [{"id": "seed2", "type": "chem.seed"}]}).decode()


def new_version(
    ns: str, request_id: str | None = None, note: str = "", doc: str = DOC
) -> NewDefinitionVersion:
    return NewDefinitionVersion(ns, "chem", doc, HASH, note, "alice", request_id)


async def test_definitions_round_trip(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    v1, existed = await grpc_store.put_definition_version(new_version(ns, note="first"))
    assert not existed  # the request id was chosen by the client
    assert v1 == await store_backend.get_definition_version(ns, "chem", 1)
    assert v1.created_at.tzinfo is not None
    assert v1.published_at is None
    # The same document again is version 1 again (reused, not stored: existed).
    assert await grpc_store.put_definition_version(new_version(ns)) == (v1, True)
    v2, existed = await grpc_store.put_definition_version(new_version(ns, "r-2", doc=DOC_2))
    assert (v2.version, existed) == (2, False)
    assert await grpc_store.put_definition_version(new_version(ns, "r-2", doc=DOC_2)) == (v2, True)
    with pytest.raises(AlreadyExists):
        await grpc_store.put_definition_version(
            NewDefinitionVersion(ns, "chem", "{}", HASH, request_id="r-2")
        )

    with pytest.raises(NotFound):
        await grpc_store.get_definition_version(ns, "chem")
    published = await grpc_store.transition_definition_version(
        DefinitionTransitionCommand(
            ns, "chem", 1, DefinitionState.PUBLISHED, (DefinitionState.DRAFT,), "ship", "bob"
        )
    )
    assert published == await store_backend.get_definition_version(ns, "chem", 1)
    assert published.published_at is not None
    assert [h.state for h in published.history] == [DefinitionState.DRAFT, published.state]
    assert await grpc_store.get_definition_version(ns, "chem") == published
    with pytest.raises(FailedPrecondition) as err:
        await grpc_store.transition_definition_version(
            DefinitionTransitionCommand(
                ns, "chem", 2, DefinitionState.ARCHIVED, (DefinitionState.PUBLISHED,)
            )
        )
    assert err.value.reason == "TRANSITION_NOT_ALLOWED"

    first = await grpc_store.list_definition_versions(ns, "chem", Page(size=1))
    assert first == await store_backend.list_definition_versions(ns, "chem", Page(size=1))
    second = await grpc_store.list_definition_versions(
        ns, "chem", Page(size=1, token=first.next_token)
    )
    assert [v.version for v in first.versions + second.versions] == [2, 1]
    latest = await grpc_store.list_definition_versions(ns, None, Page())
    assert latest.versions == (v2,)


async def test_leases_round_trip(
    grpc_store: GrpcEventStore, store_backend: EventStore, ns: str
) -> None:
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    (lease,) = await grpc_store.claim_flows(ClaimRequest("replica-a", 5, 60_000, (ns,)))
    assert lease.owner == "replica-a"
    assert lease.flow == await store_backend.get_flow(ns, flow.flow_id)
    assert lease.flow.lease_token == lease.fencing_token
    assert await grpc_store.claim_flows(ClaimRequest("replica-b", 5, 60_000, (ns,))) == ()

    await grpc_store.append(
        Append(ns, flow.flow_id, 0, "c-1", (ev(),), fencing_token=lease.fencing_token)
    )
    renewed = await grpc_store.renew_lease(
        ns, flow.flow_id, "replica-a", lease.fencing_token, 90_000
    )
    assert renewed.fencing_token == lease.fencing_token
    assert renewed.expires_at > lease.expires_at
    assert renewed.flow.version == 1
    assert await grpc_store.release_lease(ns, flow.flow_id, lease.fencing_token)
    with pytest.raises(FailedPrecondition) as err:
        await grpc_store.append(
            Append(ns, flow.flow_id, 1, "c-2", (ev(),), fencing_token=lease.fencing_token)
        )
    assert err.value.reason == "LEASE_LOST"
    with pytest.raises(FailedPrecondition) as err:
        await grpc_store.renew_lease(ns, flow.flow_id, "replica-a", lease.fencing_token, 1000)
    assert err.value.reason == "LEASE_LOST"
    (again,) = await grpc_store.claim_flows(
        ClaimRequest("replica-b", 5, 60_000, (), (flow.flow_id,))
    )
    assert again.fencing_token > lease.fencing_token
    assert not await grpc_store.release_lease(ns, flow.flow_id, lease.fencing_token)
    with pytest.raises(NotFound):
        await grpc_store.release_lease(f"{ns}-x", flow.flow_id, again.fencing_token)


async def test_a_put_whose_response_is_lost_stores_one_version(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    lost = gated_store.hold("put_definition_version")
    putting = asyncio.create_task(proxied_store.put_definition_version(new_version(ns)))
    await asyncio.wait_for(lost.reached.wait(), BOUND)  # stored; the answer is held
    await store_proxy.reset_all()  # ... and lost with the connection
    stored, existed = await asyncio.wait_for(putting, BOUND)
    assert not existed  # the request id was the client's own: the repeat found this call's put
    assert store_proxy.accepted >= 2
    listed = await store_backend.list_definition_versions(ns, "chem", Page())
    assert listed.versions == (stored,)


async def test_a_claim_whose_response_is_lost_holds_its_flows_until_they_expire(
    proxied_store: GrpcEventStore,
    store_proxy: TcpProxy,
    gated_store: GatedStore,
    store_backend: EventStore,
    ns: str,
) -> None:
    """The documented cost of a non-idempotent claim: the repeat gets nothing for that flow,
    which stays leased to the lost claim (never to two holders) until its lease runs out."""
    flow, _ = await store_backend.create_flow(NewFlow(ns, "f"))
    lost = gated_store.hold("claim_flows")
    claiming = asyncio.create_task(
        proxied_store.claim_flows(ClaimRequest("replica-a", 1, 60_000, (ns,)))
    )
    await asyncio.wait_for(lost.reached.wait(), BOUND)
    await store_proxy.reset_all()
    assert await asyncio.wait_for(claiming, BOUND) == ()
    held = await store_backend.get_flow(ns, flow.flow_id)
    assert held.lease_token > 0
    assert await store_backend.claim_flows(ClaimRequest("replica-b", 1, 60_000, (ns,))) == ()
