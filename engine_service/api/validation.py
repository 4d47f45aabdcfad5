"""Validation of EngineService requests, before anything reaches the store.

Each ``check_*`` function inspects one request (anything with the request's fields, described by
a Protocol, so no protobuf type is needed here) and raises one error listing *every* offending
field, as the path sent (``params_json.split``, ``hashes[3]``): RESOURCE_EXHAUSTED when a size
limit was passed, INVALID_ARGUMENT otherwise. The collector is the store's
:class:`flowledger_core.checks.FieldChecks`, so both services word and report violations alike.
Checks that need stored state (an unknown definition, a step the flow does not have) happen
later, with the same field names. The ``limits`` (payload sizes, id lengths, JSON depth) are the
store's configured ones, which the engine asks the store for
(:mod:`engine_service.store_client.limits`), so that a request the store would refuse is refused
here, naming this request's fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from engine_service.validation import json_path
from flowledger.canonical import JsonValue
from flowledger_core.checks import FieldChecks
from flowledger_core.limits import Limits

MAX_PAGE_SIZE = 1000
MAX_HASHES = 1000
MAX_TEXT = 1024  # change notes, actors, tokens
MAX_KEY = 128  # idempotency keys, request ids
MAX_DOCUMENT_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")
_STEP_ID = re.compile(r"[a-z0-9_-]{1,64}\Z")
# DefinitionFormat and DefinitionState numbers (engine.proto) accepted in requests.
_FORMATS = (0, 1, 2)
# WatchFilter numbers (engine.proto): every event, the close event only.
_WATCH_FILTERS = (0, 1)

def _name(c: FieldChecks, value: str, field: str) -> None:
    if not value:
        c.bad(field, "is required (1..128 characters of letters, digits and . _ -)")
    elif not _NAME.match(value):
        c.bad(field, "must be 1..128 characters of letters, digits and . _ -")


def _key(c: FieldChecks, value: str, field: str) -> None:
    """An optional client-chosen key: 1..128 characters, no NUL."""
    c.text(value, field, MAX_KEY)


def _page(c: FieldChecks, size: int, token: str) -> None:
    c.in_range(size, "page_size", 1, MAX_PAGE_SIZE, "100")
    c.text(token, "page_token", MAX_TEXT)


# -- definitions ---------------------------------------------------------------------------------


class CreateDefinitionVersionRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def document(self) -> str: ...
    @property
    def format(self) -> int: ...
    @property
    def change_note(self) -> str: ...
    @property
    def created_by(self) -> str: ...
    @property
    def request_id(self) -> str: ...


def check_create_definition_version(
    req: CreateDefinitionVersionRequest, limits: Limits
) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    _name(c, req.name, "name")
    size = len(req.document.encode("utf-8", "surrogatepass"))
    if not req.document.strip():
        c.bad("document", "is required (a JSON or YAML definition document)")
    elif size > MAX_DOCUMENT_BYTES:
        c.too_big("document", f"is {size} bytes; at most {MAX_DOCUMENT_BYTES} are allowed",
                  "max_document_bytes", MAX_DOCUMENT_BYTES)
    if req.format not in _FORMATS:
        c.bad("format", f"{req.format} is not a known definition format")
    c.text(req.change_note, "change_note", MAX_TEXT)
    c.text(req.created_by, "created_by", MAX_TEXT)
    if req.request_id:
        c.command_id(req.request_id, "request_id")
    c.done("CreateDefinitionVersion")


class DefinitionChangeRequest(Protocol):
    """Publish, Archive and Rollback."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def change_note(self) -> str: ...
    @property
    def actor(self) -> str: ...


def check_definition_change(req: DefinitionChangeRequest, limits: Limits, rpc: str) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    _name(c, req.name, "name")
    if req.version < 1:
        c.bad("version", f"must name a version (>= 1), got {req.version}")
    c.text(req.change_note, "change_note", MAX_TEXT)
    c.text(req.actor, "actor", MAX_TEXT)
    c.done(rpc)


class GetDefinitionVersionRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...


def check_get_definition_version(req: GetDefinitionVersionRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    _name(c, req.name, "name")
    c.non_negative(req.version, "version")
    c.done("GetDefinitionVersion")


class ListDefinitionsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


def check_list_definitions(req: ListDefinitionsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    if req.name:
        _name(c, req.name, "name")
    _page(c, req.page_size, req.page_token)
    c.done("ListDefinitions")


# -- flows ---------------------------------------------------------------------------------------


class StartFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def definition_name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def input_json(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def started_by(self) -> str: ...


def check_start_flow(req: StartFlowRequest, limits: Limits) -> JsonValue:
    """Returns the input parsed from ``input_json`` (None when it is empty), so that the
    request's JSON is parsed once."""
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    _name(c, req.definition_name, "definition_name")
    c.non_negative(req.version, "version")
    _, flow_input = c.json(req.input_json, "input_json", require_object=False, optional=True)
    _key(c, req.idempotency_key, "idempotency_key")
    c.text(req.started_by, "started_by", MAX_TEXT)
    c.done("StartFlow")
    value: JsonValue = flow_input
    return value


class FlowRef(Protocol):
    """DescribeFlow and VerifyFlow."""

    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...


def check_flow_ref(req: FlowRef, limits: Limits, rpc: str) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.done(rpc)


class ListFlowRunsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def statuses(self) -> Sequence[int]: ...
    @property
    def definition_name(self) -> str: ...
    @property
    def parent_flow_id(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...
    @property
    def flow_id_prefix(self) -> str: ...


def check_list_flow_runs(req: ListFlowRunsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    for i, status in enumerate(req.statuses):
        c.flow_status(status, f"statuses[{i}]", allow_unspecified=False)
    if req.definition_name:
        _name(c, req.definition_name, "definition_name")
    c.uuid(req.parent_flow_id, "parent_flow_id", optional=True)
    c.id_prefix(req.flow_id_prefix, "flow_id_prefix")
    _page(c, req.page_size, req.page_token)
    c.done("ListFlowRuns")


class WatchFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def after_version(self) -> int: ...
    @property
    def filter(self) -> int: ...


def check_watch_flow(req: WatchFlowRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.after_version, "after_version")
    if req.filter not in _WATCH_FILTERS:
        c.bad("filter", f"{req.filter} is not a known watch filter")
    c.done("WatchFlow")


class FetchArtifactsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def hashes(self) -> Sequence[str]: ...


def check_fetch_artifacts(req: FetchArtifactsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    if not req.hashes:
        c.bad("hashes", "must hold at least one hash")
    elif len(req.hashes) > MAX_HASHES:
        c.too_big("hashes", f"has {len(req.hashes)} hashes; at most {MAX_HASHES} per call",
                  "max_hashes", MAX_HASHES)
    for i, value in enumerate(req.hashes[:MAX_HASHES]):
        c.hash(value, f"hashes[{i}]")
    c.done("FetchArtifacts")


class BranchFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def at_step(self) -> str: ...
    @property
    def params_json(self) -> Mapping[str, str]: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def started_by(self) -> str: ...


def check_branch_flow(req: BranchFlowRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    if not req.at_step:
        c.bad("at_step", "is required (the id of the first step the branch re-runs)")
    elif not _STEP_ID.match(req.at_step):
        c.bad("at_step", "must be a step id (1..64 characters of [a-z0-9_-])")
    for step_id in sorted(req.params_json):
        field = json_path("params_json", [step_id])
        if not _STEP_ID.match(step_id):
            c.bad(field, "the key must be a step id (1..64 characters of [a-z0-9_-])")
        c.json(req.params_json[step_id], field, require_object=True)
    _key(c, req.idempotency_key, "idempotency_key")
    c.text(req.started_by, "started_by", MAX_TEXT)
    c.done("BranchFlow")


class SignalFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def payload_json(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def sent_by(self) -> str: ...


def check_signal_flow(req: SignalFlowRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", req.name):
        c.bad("name", "must be 1..128 characters of letters, digits and . _ : -")
    c.json(req.payload_json, "payload_json", require_object=False, optional=True)
    if req.request_id and not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", req.request_id):
        c.bad("request_id", "must be 1..100 characters of letters, digits and . _ : -")
    c.text(req.sent_by, "sent_by", MAX_TEXT)
    c.done("SignalFlow")


class CancelFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def cancelled_by(self) -> str: ...


def check_cancel_flow(req: CancelFlowRequest, limits: Limits) -> None:
    _check_ending(req, limits, "cancelled_by", req.cancelled_by, "CancelFlow")


class TerminateFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def terminated_by(self) -> str: ...


def check_terminate_flow(req: TerminateFlowRequest, limits: Limits) -> None:
    _check_ending(req, limits, "terminated_by", req.terminated_by, "TerminateFlow")


def _check_ending(
    req: CancelFlowRequest | TerminateFlowRequest, limits: Limits, actor_field: str,
    actor: str, rpc: str,
) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.text(req.reason, "reason", MAX_TEXT)
    c.text(actor, actor_field, MAX_TEXT)
    c.done(rpc)
