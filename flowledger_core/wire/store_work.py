"""Protobuf ↔ domain for the engine's work RPCs: versioned definitions and work leases.

The same rules as :mod:`flowledger_core.wire.store` (split off to keep modules small): requests are
converted only after :mod:`store_service.validation_work` accepted them, enums map by name, and
the client half (used by ``engine_service.store_client.client``) refuses values of a newer contract.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from flowledger.errors import InternalError
from flowledger.v1 import store_pb2
from flowledger_core import domain
from flowledger_core.wire import store as convert
from flowledger_core.wire import store_client as convert_client

_STATE_TO_PB: dict[domain.DefinitionState, store_pb2.StoredDefinitionState.ValueType] = {
    s: store_pb2.StoredDefinitionState.Value(f"STORED_DEFINITION_STATE_{s.name}")
    for s in domain.DefinitionState
}
_STATE_FROM_PB: dict[int, domain.DefinitionState] = {v: k for k, v in _STATE_TO_PB.items()}


def definition_state_from_number(number: int) -> domain.DefinitionState | None:
    """The domain state of a wire value; None for UNSPECIFIED or an unknown number."""
    return _STATE_FROM_PB.get(number)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


# -- requests → domain ---------------------------------------------------------------------------


def new_definition_version(
    req: store_pb2.PutDefinitionVersionRequest,
) -> domain.NewDefinitionVersion:
    return domain.NewDefinitionVersion(
        namespace=req.namespace,
        name=req.name,
        definition_json=req.definition_json,
        definition_hash=req.definition_hash,
        change_note=req.change_note,
        created_by=req.created_by,
        request_id=req.request_id or None,
    )


def definition_query(
    req: store_pb2.ListStoredDefinitionVersionsRequest,
) -> tuple[str | None, domain.Page]:
    """(name or None for every definition, page)."""
    size = req.page_size or convert.DEFAULT_PAGE_SIZE
    return req.name or None, domain.Page(size=size, token=req.page_token)


def definition_transition(
    req: store_pb2.TransitionDefinitionVersionRequest,
) -> domain.DefinitionTransitionCommand:
    return domain.DefinitionTransitionCommand(
        namespace=req.namespace,
        name=req.name,
        version=req.version,
        to_state=_STATE_FROM_PB[req.to_state],
        from_states=tuple(_STATE_FROM_PB[s] for s in req.from_states),
        change_note=req.change_note,
        actor=req.actor,
    )


def claim_request(req: store_pb2.ClaimFlowsRequest) -> domain.ClaimRequest:
    return domain.ClaimRequest(
        owner=req.owner,
        limit=req.limit,
        lease_ms=req.lease_ms,
        namespaces=tuple(req.namespaces),
        flow_ids=tuple(req.flow_ids),
        task_queues=tuple(req.task_queues),
    )


# -- domain → responses --------------------------------------------------------------------------


def stored_definition_to_pb(d: domain.StoredDefinition) -> store_pb2.StoredDefinitionVersion:
    pb = store_pb2.StoredDefinitionVersion(
        namespace=d.namespace,
        name=d.name,
        version=d.version,
        state=_STATE_TO_PB[d.state],
        definition_json=d.definition_json,
        definition_hash=d.definition_hash,
        change_note=d.change_note,
        created_by=d.created_by,
        created_at=_timestamp(d.created_at),
        request_id=d.request_id or "",
        history=[
            store_pb2.StoredDefinitionTransition(
                state=_STATE_TO_PB[h.state],
                change_note=h.change_note,
                actor=h.actor,
                at=_timestamp(h.at),
            )
            for h in d.history
        ],
    )
    if d.published_at is not None:
        pb.published_at.CopyFrom(_timestamp(d.published_at))
    return pb


def flow_lease_to_pb(lease: domain.FlowLease) -> store_pb2.FlowLease:
    return store_pb2.FlowLease(
        flow=convert.flow_to_pb(lease.flow),
        fencing_token=lease.fencing_token,
        expires_at=_timestamp(lease.expires_at),
        owner=lease.owner,
        previous_owner=lease.previous_owner,
        remaining_ms=max(lease.remaining_ms or 0, 0),
    )


def put_definition_version_response(
    stored: domain.StoredDefinition, existed: bool
) -> store_pb2.PutDefinitionVersionResponse:
    return store_pb2.PutDefinitionVersionResponse(
        version=stored_definition_to_pb(stored), existed=existed
    )


def get_definition_version_response(
    stored: domain.StoredDefinition,
) -> store_pb2.GetStoredDefinitionVersionResponse:
    return store_pb2.GetStoredDefinitionVersionResponse(version=stored_definition_to_pb(stored))


def list_definition_versions_response(
    page: domain.DefinitionPage,
) -> store_pb2.ListStoredDefinitionVersionsResponse:
    return store_pb2.ListStoredDefinitionVersionsResponse(
        versions=[stored_definition_to_pb(v) for v in page.versions],
        next_page_token=page.next_token,
    )


def transition_response(
    stored: domain.StoredDefinition,
) -> store_pb2.TransitionDefinitionVersionResponse:
    return store_pb2.TransitionDefinitionVersionResponse(version=stored_definition_to_pb(stored))


def claim_flows_response(leases: tuple[domain.FlowLease, ...]) -> store_pb2.ClaimFlowsResponse:
    return store_pb2.ClaimFlowsResponse(leases=[flow_lease_to_pb(x) for x in leases])


def renew_lease_response(lease: domain.FlowLease) -> store_pb2.RenewLeaseResponse:
    return store_pb2.RenewLeaseResponse(lease=flow_lease_to_pb(lease))


# -- domain → requests, responses → domain (the engine's client, engine_service.store_client.client)
# ---


def put_definition_version_request(
    new: domain.NewDefinitionVersion,
) -> store_pb2.PutDefinitionVersionRequest:
    return store_pb2.PutDefinitionVersionRequest(
        namespace=new.namespace,
        name=new.name,
        definition_json=new.definition_json,
        definition_hash=new.definition_hash,
        change_note=new.change_note,
        created_by=new.created_by,
        request_id=new.request_id or "",
    )


def list_definition_versions_request(
    namespace: str, name: str | None, page: domain.Page
) -> store_pb2.ListStoredDefinitionVersionsRequest:
    return store_pb2.ListStoredDefinitionVersionsRequest(
        namespace=namespace, name=name or "", page_size=page.size, page_token=page.token
    )


def transition_request(
    cmd: domain.DefinitionTransitionCommand,
) -> store_pb2.TransitionDefinitionVersionRequest:
    return store_pb2.TransitionDefinitionVersionRequest(
        namespace=cmd.namespace,
        name=cmd.name,
        version=cmd.version,
        to_state=_STATE_TO_PB[cmd.to_state],
        from_states=[_STATE_TO_PB[s] for s in cmd.from_states],
        change_note=cmd.change_note,
        actor=cmd.actor,
    )


def claim_flows_request(req: domain.ClaimRequest) -> store_pb2.ClaimFlowsRequest:
    return store_pb2.ClaimFlowsRequest(
        owner=req.owner,
        limit=req.limit,
        lease_ms=req.lease_ms,
        namespaces=list(req.namespaces),
        flow_ids=list(req.flow_ids),
        task_queues=list(req.task_queues),
    )


def _number_to_state(number: int) -> domain.DefinitionState:
    state = _STATE_FROM_PB.get(number)
    if state is None:  # a newer store: the contracts disagree, nothing to retry
        raise InternalError(f"the store sent an unknown definition state {number}")
    return state


def stored_definition_from_pb(pb: store_pb2.StoredDefinitionVersion) -> domain.StoredDefinition:
    return domain.StoredDefinition(
        namespace=pb.namespace,
        name=pb.name,
        version=pb.version,
        state=_number_to_state(pb.state),
        definition_json=pb.definition_json,
        definition_hash=pb.definition_hash,
        change_note=pb.change_note,
        created_by=pb.created_by,
        created_at=_datetime(pb.created_at),
        published_at=_datetime(pb.published_at) if pb.HasField("published_at") else None,
        history=tuple(
            domain.DefinitionTransition(
                _number_to_state(h.state), h.change_note, h.actor, _datetime(h.at)
            )
            for h in pb.history
        ),
        request_id=pb.request_id or None,
    )


def flow_lease_from_pb(pb: store_pb2.FlowLease) -> domain.FlowLease:
    # The wire's Flow has no lease token; a lease's flow carries its own, as the backends' do.
    flow = replace(convert_client.flow_from_pb(pb.flow), lease_token=pb.fencing_token)
    return domain.FlowLease(
        flow=flow,
        fencing_token=pb.fencing_token,
        expires_at=_datetime(pb.expires_at),
        owner=pb.owner,
        previous_owner=pb.previous_owner,
        remaining_ms=pb.remaining_ms or None,
    )
