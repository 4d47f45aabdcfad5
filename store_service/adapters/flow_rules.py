"""The rules of a flow's history that both backends apply alike (pure: no storage).

* An ended flow (status COMPLETED, FAILED or CANCELLED) accepts no more events: an append to it
  is FAILED_PRECONDITION, reason ``FLOW_ENDED`` (metadata ``status``). Going on from an ended
  flow is explicit: a branch (a new flow inheriting its log up to a fork version), or a prune
  that cuts the ending away (below).
* A prune that cuts events off an ended flow reopens it (decision 0022): the flow becomes
  RUNNING (wake_at and task_queue cleared), so an engine claims it and runs on from the kept
  log; its ending, and the fingerprint it claimed, are gone with the cut. A prune that cuts
  nothing, and any prune of a flow that has not ended, leaves the status as it is.
* A listing's ``flow_id_prefix`` must be the start of a canonical id, else INVALID_ARGUMENT
  naming the field (the services check it first; this is the port's own guard).
* DeleteBranch deletes branches only: a root flow (no parent) is FAILED_PRECONDITION, reason
  ``NOT_A_BRANCH``.
"""

from __future__ import annotations

from flowledger.errors import FailedPrecondition, InvalidArgument
from flowledger_core.domain import Flow, FlowFilter, FlowStatus
from flowledger_core.id_prefix import is_id_prefix


def flow_ended(flow_id: str, status: str) -> FailedPrecondition:
    """The refusal of an append to a flow that has ended in ``status``."""
    return FailedPrecondition(
        f"flow {flow_id} has ended ({status}); it accepts no more events. To go on from it, "
        "create a branch of it (CreateBranch), or prune its ending away (PruneFlow)",
        reason="FLOW_ENDED",
        metadata={"flow_id": flow_id, "status": status},
    )


def check_not_ended(flow: Flow) -> None:
    if flow.status.terminal:
        raise flow_ended(flow.flow_id, flow.status.value)


def reopens(flow: Flow, keep_through_version: int) -> bool:
    """Whether pruning ``flow`` after ``keep_through_version`` makes it RUNNING again."""
    return flow.status.terminal and keep_through_version < flow.version


REOPENED = FlowStatus.RUNNING


def check_is_branch(flow: Flow) -> None:
    if flow.parent_flow_id is None:
        raise FailedPrecondition(
            f"flow {flow.flow_id} is a root flow, not a branch: DeleteBranch deletes branches "
            "only",
            reason="NOT_A_BRANCH",
            metadata={"flow_id": flow.flow_id},
        )


def checked_prefix(flt: FlowFilter) -> str:
    """The filter's id prefix, or InvalidArgument naming it (the port's own check)."""
    if not is_id_prefix(flt.flow_id_prefix):
        raise InvalidArgument.field(
            "flow_id_prefix",
            f"is not the start of a canonical flow id: {flt.flow_id_prefix!r:.40}",
        )
    return flt.flow_id_prefix
