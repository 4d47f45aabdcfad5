"""Fencing: what a run does when the store says its lease on a flow is gone.

A run given a fencing token (from ``EventStore.claim_flows``) sends it with every append; the
store refuses an append whose token is no longer the flow's current lease token, or whose lease
expired, with FailedPrecondition reason ``LEASE_LOST``. Another replica owns the flow from then
on, so the run must stop at once: no retry, no re-read-and-decide, no further write of any kind.
"""

from __future__ import annotations

from flowledger.errors import FailedPrecondition, FlowledgerError

LEASE_LOST = "LEASE_LOST"


class LeaseLost(FailedPrecondition):
    """This run's lease on the flow is gone: it has stopped and will not write again.

    A FailedPrecondition (reason ``LEASE_LOST``), so it crosses the gRPC seam like any other;
    ``except LeaseLost`` lets a worker tell it apart from a flow that cannot run.
    """

    default_reason = LEASE_LOST

    def __init__(self, flow_id: str, fencing_token: int, detail: str = "") -> None:
        super().__init__(
            f"lease on flow {flow_id} lost (fencing token {fencing_token})"
            + (f": {detail}" if detail else "")
            + "; this run stopped and writes nothing more",
            metadata={"flow_id": flow_id, "fencing_token": str(fencing_token)},
        )
        self.flow_id = flow_id
        self.fencing_token = fencing_token


def is_lease_lost(exc: BaseException) -> bool:
    """True for the store's refusal of a stale or expired fencing token."""
    return isinstance(exc, FlowledgerError) and (
        isinstance(exc, LeaseLost)
        or (isinstance(exc, FailedPrecondition) and exc.reason == LEASE_LOST)
    )
