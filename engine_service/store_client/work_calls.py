"""The definition and lease calls of :class:`engine_service.store_client.client.GrpcEventStore`.

A mixin so that the client stays one module per concern: these calls share the client's unary
machinery (deadlines, retries within the budget, error mapping) through ``_unary``.

Repeating a claim: ClaimFlows is not idempotent. A claim whose response is lost leaves those
flows leased to nobody useful until the lease expires; they are then claimed again.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import TypeVar

import grpc.aio

from engine_service.store_client.port import check_page, check_request_id
from flowledger.v1 import store_pb2, store_pb2_grpc
from flowledger_core.domain import (
    ClaimRequest,
    DefinitionPage,
    DefinitionTransitionCommand,
    FlowLease,
    NewDefinitionVersion,
    Page,
    StoredDefinition,
)
from flowledger_core.wire import store_work as convert_work

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class WorkCalls:
    _stub: store_pb2_grpc.StoreServiceAsyncStub

    async def _unary(
        self,
        what: str,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
    ) -> _Resp:
        raise NotImplementedError

    # -- versioned definitions ---------------------------------------------------------------

    async def put_definition_version(
        self, new: NewDefinitionVersion
    ) -> tuple[StoredDefinition, bool]:
        check_request_id(new)
        chosen_here = new.request_id is None
        if chosen_here:
            new = replace(new, request_id=str(uuid.uuid4()))
        request = convert_work.put_definition_version_request(new)
        resp = await self._unary("PutDefinitionVersion", self._stub.PutDefinitionVersion, request)
        # As for create_flow: a version stored under a request id of our own making was stored
        # by this very call (a retry found it); any other existing version is the latest one
        # reused.
        stored = convert_work.stored_definition_from_pb(resp.version)
        return stored, resp.existed and not (chosen_here and stored.request_id == new.request_id)

    async def get_definition_version(
        self, namespace: str, name: str, version: int = 0
    ) -> StoredDefinition:
        request = store_pb2.GetStoredDefinitionVersionRequest(
            namespace=namespace, name=name, version=version
        )
        resp = await self._unary(
            "GetStoredDefinitionVersion", self._stub.GetStoredDefinitionVersion, request
        )
        return convert_work.stored_definition_from_pb(resp.version)

    async def list_definition_versions(
        self, namespace: str, name: str | None, page: Page
    ) -> DefinitionPage:
        check_page(page)
        request = convert_work.list_definition_versions_request(namespace, name, page)
        resp = await self._unary(
            "ListStoredDefinitionVersions", self._stub.ListStoredDefinitionVersions, request
        )
        return DefinitionPage(
            tuple(convert_work.stored_definition_from_pb(v) for v in resp.versions),
            resp.next_page_token,
        )

    async def transition_definition_version(
        self, cmd: DefinitionTransitionCommand
    ) -> StoredDefinition:
        request = convert_work.transition_request(cmd)
        resp = await self._unary(
            "TransitionDefinitionVersion", self._stub.TransitionDefinitionVersion, request
        )
        return convert_work.stored_definition_from_pb(resp.version)

    # -- work leases (see the module docstring on repeating a claim) -------------------------

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        request = convert_work.claim_flows_request(req)
        resp = await self._unary("ClaimFlows", self._stub.ClaimFlows, request)
        return tuple(convert_work.flow_lease_from_pb(x) for x in resp.leases)

    async def renew_lease(
        self, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
    ) -> FlowLease:
        request = store_pb2.RenewLeaseRequest(
            namespace=namespace, flow_id=flow_id, owner=owner, fencing_token=fencing_token,
            lease_ms=lease_ms,
        )
        resp = await self._unary("RenewLease", self._stub.RenewLease, request)
        return convert_work.flow_lease_from_pb(resp.lease)

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        request = store_pb2.ReleaseLeaseRequest(
            namespace=namespace, flow_id=flow_id, fencing_token=fencing_token
        )
        resp = await self._unary("ReleaseLease", self._stub.ReleaseLease, request)
        return resp.released
