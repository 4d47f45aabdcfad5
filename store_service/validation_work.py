"""Request validation of the engine's work RPCs: versioned definitions and work leases.

The same contract as :mod:`store_service.validation` (split off to keep modules small): each
``check_*`` reads the request's attributes and raises one error listing every offending field
(RESOURCE_EXHAUSTED when a size limit was passed, INVALID_ARGUMENT otherwise). Ranges are the
contract's (store.proto); what needs the stored state is the backend's to check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flowledger.canonical import canonical_bytes
from flowledger_core.checks import FieldChecks
from flowledger_core.wire.store_work import definition_state_from_number
from store_service.settings import Limits
from store_service.validation import (
    MAX_LEASE_MS,
    MAX_OPAQUE_TOKEN_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_PAGE_SIZE,
    MAX_TEXT_LENGTH,
    MIN_LEASE_MS,
)

MAX_NOTE_LENGTH = 4096  # change notes: free text, bounded
MAX_CLAIM_LIMIT = 100
MAX_CLAIM_FILTER = 1000  # namespaces / flow ids / task queues per claim
_MAX_TOKEN = 2**63 - 1


def _state(c: FieldChecks, value: int, field: str) -> None:
    if definition_state_from_number(value) is None:
        c.bad(field, "must be a known definition state, not STORED_DEFINITION_STATE_UNSPECIFIED"
              if value == 0 else f"{value} is not a known definition state")


class PutDefinitionVersionRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def definition_json(self) -> str: ...
    @property
    def definition_hash(self) -> str: ...
    @property
    def change_note(self) -> str: ...
    @property
    def created_by(self) -> str: ...
    @property
    def request_id(self) -> str: ...


def check_put_definition_version(req: PutDefinitionVersionRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.definition_name(req.name)
    ok, document = c.json(req.definition_json, "definition_json", require_object=True)
    if ok:
        try:
            canonical_bytes(document)
        except ValueError as exc:  # e.g. an integer past 2**53
            c.bad("definition_json", f"has no RFC 8785 canonical form: {exc}")
    c.hash(req.definition_hash, "definition_hash")
    c.text(req.change_note, "change_note", MAX_NOTE_LENGTH)
    c.text(req.created_by, "created_by", MAX_TEXT_LENGTH)
    if req.request_id:
        c.command_id(req.request_id, "request_id")
    c.done("PutDefinitionVersion")


class DefinitionVersionRef(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...


def check_get_stored_definition_version(req: DefinitionVersionRef, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.definition_name(req.name)
    c.non_negative(req.version, "version")
    c.done("GetStoredDefinitionVersion")


class ListStoredDefinitionVersionsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


def check_list_stored_definition_versions(
    req: ListStoredDefinitionVersionsRequest, limits: Limits
) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    if req.name:  # empty: the latest version of every definition
        c.definition_name(req.name)
    c.in_range(req.page_size, "page_size", 1, MAX_PAGE_SIZE, "100")
    c.text(req.page_token, "page_token", MAX_OPAQUE_TOKEN_LENGTH)
    c.done("ListStoredDefinitionVersions")


class TransitionDefinitionVersionRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def to_state(self) -> int: ...
    @property
    def change_note(self) -> str: ...
    @property
    def actor(self) -> str: ...

    @property
    def from_states(self) -> Sequence[int]: ...


def check_transition_definition_version(
    req: TransitionDefinitionVersionRequest, limits: Limits
) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.definition_name(req.name)
    c.within(req.version, "version", 1, _MAX_TOKEN)
    _state(c, req.to_state, "to_state")
    if not req.from_states:
        c.bad("from_states", "must list at least one state the version may move from")
    for i, state in enumerate(req.from_states):
        _state(c, state, f"from_states[{i}]")
    c.text(req.change_note, "change_note", MAX_NOTE_LENGTH)
    c.text(req.actor, "actor", MAX_TEXT_LENGTH)
    c.done("TransitionDefinitionVersion")


class ClaimFlowsRequest(Protocol):
    @property
    def owner(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def lease_ms(self) -> int: ...

    @property
    def namespaces(self) -> Sequence[str]: ...
    @property
    def flow_ids(self) -> Sequence[str]: ...
    @property
    def task_queues(self) -> Sequence[str]: ...


def check_claim_flows(req: ClaimFlowsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.text(req.owner, "owner", MAX_OWNER_LENGTH, required=True)
    c.within(req.limit, "limit", 1, MAX_CLAIM_LIMIT)
    c.within(req.lease_ms, "lease_ms", MIN_LEASE_MS, MAX_LEASE_MS)
    filters = (
        ("namespaces", req.namespaces), ("flow_ids", req.flow_ids),
        ("task_queues", req.task_queues),
    )  # fmt: skip
    for field, values in filters:
        if len(values) > MAX_CLAIM_FILTER:
            c.too_big(field, f"has {len(values)} entries; at most {MAX_CLAIM_FILTER} per claim",
                      "max_claim_filter", MAX_CLAIM_FILTER)
    for i, namespace in enumerate(req.namespaces[:MAX_CLAIM_FILTER]):
        c.namespace(namespace, f"namespaces[{i}]")
    for i, flow_id in enumerate(req.flow_ids[:MAX_CLAIM_FILTER]):
        c.uuid(flow_id, f"flow_ids[{i}]")
    for i, queue in enumerate(req.task_queues[:MAX_CLAIM_FILTER]):
        c.task_queue(queue, f"task_queues[{i}]")
    c.done("ClaimFlows")


class RenewLeaseRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def fencing_token(self) -> int: ...
    @property
    def lease_ms(self) -> int: ...


def check_renew_lease(req: RenewLeaseRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.text(req.owner, "owner", MAX_OWNER_LENGTH, required=True)
    c.within(req.fencing_token, "fencing_token", 1, _MAX_TOKEN)
    c.within(req.lease_ms, "lease_ms", MIN_LEASE_MS, MAX_LEASE_MS)
    c.done("RenewLease")


class ReleaseLeaseRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def fencing_token(self) -> int: ...


def check_release_lease(req: ReleaseLeaseRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.within(req.fencing_token, "fencing_token", 1, _MAX_TOKEN)
    c.done("ReleaseLease")
