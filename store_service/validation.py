"""Request validation in domain terms, before anything reaches the storage port.

Each ``check_*`` function inspects one request (anything with the request's fields: the
functions read attributes, so no protobuf type is needed here) and raises one error listing
*every* offending field, as a path such as ``events[3].payload_json``:

* :class:`~flowledger.errors.ResourceExhausted` when a size or count limit is passed (oversized
  JSON is not even parsed), together with any other violation found;
* :class:`~flowledger.errors.InvalidArgument` otherwise.

Checks that need the stored state (a fork version past the parent's version, a malformed page
token or cursor) belong to the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from flowledger.canonical import content_hash
from flowledger.v1 import store_pb2
from flowledger_core.checks import FieldChecks
from flowledger_core.domain import FlowStatus
from flowledger_core.wire.store import FLOW_STATUS_TO_PB
from store_service.adapters.initial_append import as_initial
from store_service.settings import Limits

# Contract ranges (store.proto) and schema ceilings (0001_event_log.sql).
MAX_PAGE_SIZE = 1000
MAX_CHUNK_SIZE = 10_000
MAX_HASHES_PER_GET = 1000
MAX_NAME_LENGTH = 256  # flows.name CHECK (length(name) <= 256)
MAX_TEXT_LENGTH = 1024  # created_by, reasons, kinds: free text we still bound
MAX_OPAQUE_TOKEN_LENGTH = 1024  # page tokens, cursors
MAX_OWNER_LENGTH = 128  # lease owners (replica identities)
_STAND_IN_ID = "00000000-0000-4000-8000-000000000000"
MIN_LEASE_MS, MAX_LEASE_MS = 100, 600_000
_WAITING = FLOW_STATUS_TO_PB[FlowStatus.WAITING]


class _Timestamp(Protocol):
    @property
    def seconds(self) -> int: ...
    @property
    def nanos(self) -> int: ...


class _NewEvent(Protocol):
    @property
    def type(self) -> int: ...
    @property
    def payload_json(self) -> str: ...


class _NewArtifact(Protocol):
    @property
    def hash(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def payload_json(self) -> str: ...
    @property
    def metadata_json(self) -> str: ...
    @property
    def event_index(self) -> int: ...


# -- one function per request ----------------------------------------------------------------


class CreateFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def metadata_json(self) -> str: ...
    @property
    def created_by(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def lease_owner(self) -> str: ...
    @property
    def lease_ms(self) -> int: ...
    @property
    def initial_append(self) -> store_pb2.AppendEventsRequest: ...

    def HasField(self, field_name: Literal["initial_append"]) -> bool: ...


def check_create_flow(req: CreateFlowRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id", optional=True)
    c.text(req.name, "name", MAX_NAME_LENGTH)
    c.json(req.metadata_json, "metadata_json", require_object=True, optional=True)
    c.text(req.created_by, "created_by", MAX_TEXT_LENGTH)
    c.flow_status(req.status, "status", allow_unspecified=True)
    if req.lease_owner or req.lease_ms:
        c.text(req.lease_owner, "lease_owner", MAX_OWNER_LENGTH, required=True)
        c.within(req.lease_ms, "lease_ms", MIN_LEASE_MS, MAX_LEASE_MS)
    initial = req.initial_append if req.HasField("initial_append") else None
    if initial is not None:
        if initial.namespace not in ("", req.namespace):
            c.bad("initial_append.namespace", "must be empty or the flow's namespace")
        if initial.flow_id not in ("", req.flow_id):
            c.bad("initial_append.flow_id", "must be empty or the flow's id")
        if initial.expected_version != 0:
            c.bad("initial_append.expected_version", "must be 0 (a new flow)")
        if initial.fencing_token != 0:
            c.bad("initial_append.fencing_token",
                  "must be 0 (the append carries the token of the lease asked for)")
    c.done("CreateFlow")
    if initial is not None:
        # As AppendEvents checks it, on the flow's own namespace and id (a stand-in id when
        # the store picks it), with the fields named under initial_append.
        bound = type(initial)()
        bound.CopyFrom(initial)
        bound.namespace, bound.flow_id = req.namespace, req.flow_id or _STAND_IN_ID
        with as_initial():
            check_append_events(bound, limits)


class FlowRef(Protocol):
    """GetFlow and CountSteps: a flow in a namespace."""

    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...


def check_get_flow(req: FlowRef, limits: Limits) -> None:
    _check_flow_ref(req, limits, "GetFlow")


def check_count_steps(req: FlowRef, limits: Limits) -> None:
    _check_flow_ref(req, limits, "CountSteps")


def _check_flow_ref(req: FlowRef, limits: Limits, rpc: str) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.done(rpc)


class GetLimitsRequest(Protocol):
    @property
    def namespace(self) -> str: ...


def check_get_limits(req: GetLimitsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    if req.namespace:  # optional: the limits are the same in every namespace
        c.namespace(req.namespace)
    c.done("GetLimits")


class ListFlowsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def parent_flow_id(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...

    @property
    def statuses(self) -> Sequence[int]: ...
    @property
    def flow_id_prefix(self) -> str: ...


def check_list_flows(req: ListFlowsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    for i, status in enumerate(req.statuses):
        c.flow_status(status, f"statuses[{i}]", allow_unspecified=False)
    c.text(req.name, "name", MAX_NAME_LENGTH)
    c.uuid(req.parent_flow_id, "parent_flow_id", optional=True)
    c.id_prefix(req.flow_id_prefix, "flow_id_prefix")
    c.in_range(req.page_size, "page_size", 1, MAX_PAGE_SIZE, "100")
    c.text(req.page_token, "page_token", MAX_OPAQUE_TOKEN_LENGTH)
    c.done("ListFlows")


class AppendEventsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def expected_version(self) -> int: ...
    @property
    def command_id(self) -> str: ...
    @property
    def new_status(self) -> int: ...
    @property
    def fencing_token(self) -> int: ...
    @property
    def wake_at(self) -> _Timestamp: ...
    @property
    def task_queue(self) -> str: ...

    @property
    def events(self) -> Sequence[_NewEvent]: ...
    @property
    def artifacts(self) -> Sequence[_NewArtifact]: ...

    def HasField(self, field_name: Literal["wake_at"]) -> bool: ...


def check_append_events(req: AppendEventsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.expected_version, "expected_version")
    c.command_id(req.command_id)
    n_events = len(req.events)
    if n_events == 0:
        c.bad("events", "must hold at least one event")
    elif n_events > limits.max_events_per_append:
        c.too_big("events", f"has {n_events} events; at most {limits.max_events_per_append} "
                  "per append", "max_events_per_append", limits.max_events_per_append)
    for i, event in enumerate(req.events):
        c.event_type(event.type, f"events[{i}].type")
        c.json(event.payload_json, f"events[{i}].payload_json", require_object=True)
    if len(req.artifacts) > limits.max_artifacts_per_append:
        c.too_big("artifacts", f"has {len(req.artifacts)} artifacts; at most "
                  f"{limits.max_artifacts_per_append} per append", "max_artifacts_per_append",
                  limits.max_artifacts_per_append)
    for i, art in enumerate(req.artifacts):
        _check_artifact(c, art, f"artifacts[{i}]", n_events)
    c.flow_status(req.new_status, "new_status", allow_unspecified=True)
    c.non_negative(req.fencing_token, "fencing_token")
    _check_wait(c, req)
    c.done("AppendEvents")


def _check_wait(c: FieldChecks, req: AppendEventsRequest) -> None:
    """wake_at and task_queue replace the flow's only together with new_status (store.proto)."""
    if req.HasField("wake_at"):
        c.timestamp(req.wake_at.seconds, req.wake_at.nanos, "wake_at")
        if not req.new_status:
            c.bad("wake_at", "is only allowed together with new_status")
    if req.task_queue:
        c.task_queue(req.task_queue, "task_queue")
        if not req.new_status:
            c.bad("task_queue", "is only allowed together with new_status")
        elif req.new_status != _WAITING:
            c.bad("task_queue", "is only allowed with new_status FLOW_STATUS_WAITING")


def _check_artifact(c: FieldChecks, art: _NewArtifact, path: str, n_events: int) -> None:
    hash_ok = c.hash(art.hash, f"{path}.hash")
    c.text(art.kind, f"{path}.kind", MAX_TEXT_LENGTH, required=True)
    ok, payload = c.json(art.payload_json, f"{path}.payload_json", require_object=False)
    c.json(art.metadata_json, f"{path}.metadata_json", require_object=False, optional=True)
    if not 0 <= art.event_index < max(n_events, 1):
        c.bad(f"{path}.event_index", f"must point into events (0..{max(n_events - 1, 0)}), "
              f"got {art.event_index}")
    if ok and hash_ok:
        try:
            actual = content_hash(payload)
        except ValueError as exc:
            c.bad(f"{path}.payload_json", f"has no RFC 8785 canonical form: {exc}")
            return
        if actual != art.hash:
            c.bad(f"{path}.hash", f"does not match the payload (its canonical sha256 is {actual})")


class ReadEventsRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def after_version(self) -> int: ...
    @property
    def to_version(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...


def check_read_events(req: ReadEventsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.after_version, "after_version")
    c.non_negative(req.to_version, "to_version")
    if 0 < req.to_version < req.after_version:
        c.bad("to_version", f"must be 0 (to the end) or >= after_version ({req.after_version})")
    c.in_range(req.chunk_size, "chunk_size", 1, MAX_CHUNK_SIZE, "1000")
    c.done("ReadEvents")


class SubscribeRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def after_cursor(self) -> str: ...
    @property
    def chunk_size(self) -> int: ...

    @property
    def types(self) -> Sequence[int]: ...


def check_subscribe(req: SubscribeRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.text(req.after_cursor, "after_cursor", MAX_OPAQUE_TOKEN_LENGTH)
    for i, event_type in enumerate(req.types):
        c.event_type(event_type, f"types[{i}]")
    c.in_range(req.chunk_size, "chunk_size", 1, MAX_CHUNK_SIZE, "500")
    c.done("Subscribe")


class GetArtifactsRequest(Protocol):
    @property
    def namespace(self) -> str: ...

    @property
    def hashes(self) -> Sequence[str]: ...


def check_get_artifacts(req: GetArtifactsRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    if not req.hashes:
        c.bad("hashes", "must hold at least one hash")
    elif len(req.hashes) > MAX_HASHES_PER_GET:
        c.too_big("hashes", f"has {len(req.hashes)} hashes; at most {MAX_HASHES_PER_GET} per "
                  "call", "max_hashes_per_get", MAX_HASHES_PER_GET)
    for i, value in enumerate(req.hashes[:MAX_HASHES_PER_GET]):
        c.hash(value, f"hashes[{i}]")
    c.done("GetArtifacts")
