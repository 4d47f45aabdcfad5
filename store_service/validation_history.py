"""Request validation of the store's history RPCs: branches, prunes and snapshots.

The same contract as :mod:`store_service.validation` (split off to keep modules to one concept):
each ``check_*`` reads the request's attributes and raises one error listing every offending
field (RESOURCE_EXHAUSTED when a size limit was passed, INVALID_ARGUMENT otherwise).
"""

from __future__ import annotations

from typing import Protocol

from flowledger_core.checks import FieldChecks
from store_service.settings import Limits
from store_service.validation import MAX_NAME_LENGTH, MAX_TEXT_LENGTH


class CreateBranchRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def parent_flow_id(self) -> str: ...
    @property
    def fork_version(self) -> int: ...
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


def check_create_branch(req: CreateBranchRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.parent_flow_id, "parent_flow_id")
    c.non_negative(req.fork_version, "fork_version")
    c.uuid(req.flow_id, "flow_id", optional=True)
    if req.flow_id and req.flow_id == req.parent_flow_id:
        c.bad("flow_id", "must differ from parent_flow_id")
    c.text(req.name, "name", MAX_NAME_LENGTH)
    c.json(req.metadata_json, "metadata_json", require_object=True, optional=True)
    c.text(req.created_by, "created_by", MAX_TEXT_LENGTH)
    c.flow_status(req.status, "status", allow_unspecified=True)
    c.done("CreateBranch")


class DeleteBranchRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def deleted_by(self) -> str: ...
    @property
    def reason(self) -> str: ...


def check_delete_branch(req: DeleteBranchRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.text(req.deleted_by, "deleted_by", MAX_TEXT_LENGTH)
    c.text(req.reason, "reason", MAX_TEXT_LENGTH)
    c.done("DeleteBranch")


class PruneFlowRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def keep_through_version(self) -> int: ...
    @property
    def expected_version(self) -> int: ...
    @property
    def command_id(self) -> str: ...
    @property
    def pruned_by(self) -> str: ...
    @property
    def reason(self) -> str: ...


def check_prune_flow(req: PruneFlowRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.keep_through_version, "keep_through_version")
    c.non_negative(req.expected_version, "expected_version")
    if 0 <= req.expected_version < req.keep_through_version:
        c.bad("keep_through_version",
              f"must be <= expected_version ({req.expected_version}): it cannot keep events "
              "the flow does not have")
    c.command_id(req.command_id)
    c.text(req.pruned_by, "pruned_by", MAX_TEXT_LENGTH)
    c.text(req.reason, "reason", MAX_TEXT_LENGTH)
    c.done("PruneFlow")


class SaveSnapshotRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def state_json(self) -> str: ...


def check_save_snapshot(req: SaveSnapshotRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.version, "version")
    c.json(req.state_json, "state_json", require_object=False)
    c.done("SaveSnapshot")


class LoadSnapshotRequest(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def flow_id(self) -> str: ...
    @property
    def max_version(self) -> int: ...


def check_load_snapshot(req: LoadSnapshotRequest, limits: Limits) -> None:
    c = FieldChecks(limits)
    c.namespace(req.namespace)
    c.uuid(req.flow_id, "flow_id")
    c.non_negative(req.max_version, "max_version")
    c.done("LoadSnapshot")
