"""The rules of work leases that both backends apply alike (pure: no storage).

A lease is live while its expiry is in the future (the database clock for Postgres, a monotonic
clock for the memory store). Its fencing token identifies it: tokens come from one global
increasing counter, so a takeover always holds a larger token than any earlier lease of the flow,
and a write that carries an older token, or arrives after the expiry, is refused with
:func:`lease_lost`. Releasing keeps the token on the flow; only the owner and expiry are cleared.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from flowledger.errors import FailedPrecondition, InvalidArgument
from flowledger_core.domain import ClaimRequest, Flow, FlowStatus
from store_service.adapters.wait_rules import check_claim_queues

MAX_OWNER_LENGTH = 128
MAX_CLAIM_LIMIT = 1000
MAX_LEASE_MS = 3_600_000
MAX_FILTER_ITEMS = 1000
_RUNNABLE = (FlowStatus.QUEUED, FlowStatus.RUNNING)


def check_claim(req: ClaimRequest) -> None:
    """The stateless checks of a claim (the flow ids are canonicalised by each backend)."""
    check_owner(req.owner)
    if not 1 <= req.limit <= MAX_CLAIM_LIMIT:
        raise InvalidArgument.field("limit", f"must be 1..{MAX_CLAIM_LIMIT}")
    check_lease_ms(req.lease_ms)
    if len(req.namespaces) > MAX_FILTER_ITEMS:
        raise InvalidArgument.field("namespaces", f"at most {MAX_FILTER_ITEMS} namespaces")
    if len(req.flow_ids) > MAX_FILTER_ITEMS:
        raise InvalidArgument.field("flow_ids", f"at most {MAX_FILTER_ITEMS} flow ids")
    for i, namespace in enumerate(req.namespaces):
        if not 1 <= len(namespace) <= 128:
            raise InvalidArgument.field(f"namespaces[{i}]", "must be 1..128 characters")
    check_claim_queues(req.task_queues)


def claimable(flow: Flow, task_queues: Collection[str], now: datetime) -> bool:
    """Whether a claim may pick ``flow`` by its state (lease and filters are checked apart).

    Engines (no queues) take QUEUED and RUNNING flows, and WAITING ones whose wake_at has
    passed; task workers take only WAITING flows on one of their queues, whatever their wake_at.
    """
    if flow.deleted:
        return False
    if task_queues:
        return flow.status is FlowStatus.WAITING and flow.task_queue in task_queues
    if flow.status is FlowStatus.WAITING:
        return flow.wake_at is not None and flow.wake_at <= now
    return flow.status in _RUNNABLE


def engine_claim_order(flow: Flow, status_since: datetime) -> tuple[datetime, str]:
    """Engines claim in the order flows became claimable: since they entered their status
    (``status_since``: creation, or the last command that set a status), or their wake_at for
    WAITING ones."""
    if flow.status is FlowStatus.WAITING and flow.wake_at is not None:
        return (flow.wake_at, flow.flow_id)
    return (status_since, flow.flow_id)


def task_claim_order(flow: Flow, status_since: datetime) -> tuple[datetime, str]:
    """Task workers claim the flows that have waited on their queues longest first."""
    return (status_since, flow.flow_id)


def check_renewal(owner: str, fencing_token: int, lease_ms: int) -> None:
    check_owner(owner)
    check_token(fencing_token)
    check_lease_ms(lease_ms)


def check_owner(owner: str) -> None:
    if not 1 <= len(owner) <= MAX_OWNER_LENGTH or "\x00" in owner:
        raise InvalidArgument.field(
            "owner", f"must be 1..{MAX_OWNER_LENGTH} characters, without NUL"
        )


def check_lease_ms(lease_ms: int) -> None:
    if not 1 <= lease_ms <= MAX_LEASE_MS:
        raise InvalidArgument.field("lease_ms", f"must be 1..{MAX_LEASE_MS}")


def check_lease_request(owner: str, lease_ms: int) -> None:
    """A lease asked for with a create call (as a claim's owner and duration)."""
    check_owner(owner)
    check_lease_ms(lease_ms)


def check_token(fencing_token: int) -> None:
    if fencing_token < 1:
        raise InvalidArgument.field("fencing_token", "must be a token from a claim (>= 1)")


def lease_lost(flow_id: str, fencing_token: int) -> FailedPrecondition:
    """The refusal of a write, renewal or append made under a lease that is no longer held."""
    return FailedPrecondition(
        f"the lease of flow {flow_id} with fencing token {fencing_token} is lost "
        "(expired, released or taken over): stop working on this flow",
        reason="LEASE_LOST",
        metadata={"flow_id": flow_id, "fencing_token": str(fencing_token)},
    )
