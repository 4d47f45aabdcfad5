"""The in-memory store's work leases: the rules of :mod:`.lease_rules` over :class:`Record`s.

Called under the store's lock, which plays the part of Postgres's row locks (no claimer can see
a flow another is claiming). Expiry is decided on the monotonic clock, so a wall-clock step
cannot revive or kill a lease; tokens come from one counter of the store, as from the Postgres
sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from flowledger_core.domain import ClaimRequest, FlowLease
from store_service.adapters import lease_rules as rules
from store_service.adapters._memory_records import Record
from store_service.adapters._memory_support import flow_uuid


def claim(
    records: Iterable[Record], req: ClaimRequest, next_token: Callable[[], int]
) -> tuple[FlowLease, ...]:
    rules.check_claim(req)
    wanted = {flow_uuid(f, f"flow_ids[{i}]") for i, f in enumerate(req.flow_ids)}
    spaces = set(req.namespaces)
    queues = frozenset(req.task_queues)
    now = datetime.now(UTC)  # wake_at is compared on this store's clock, as Postgres uses its own
    order = rules.task_claim_order if queues else rules.engine_claim_order
    picked = sorted(
        (
            r
            for r in records
            if rules.claimable(r.flow, queues, now)
            and not r.lease_live()
            and (not spaces or r.flow.namespace in spaces)
            and (not wanted or r.flow.flow_id in wanted)
        ),
        key=lambda r: order(r.flow, r.status_since),
    )
    return tuple(grant(rec, req.owner, req.lease_ms, next_token) for rec in picked[: req.limit])


def grant(rec: Record, owner: str, lease_ms: int, next_token: Callable[[], int]) -> FlowLease:
    """Lease ``rec`` to ``owner`` under a new token (the caller made sure nobody holds it). An
    owner still recorded is that of a lease that expired unreleased: this grant takes it over
    (:attr:`FlowLease.previous_owner`)."""
    previous = rec.lease_owner or ""
    rec.flow = replace(rec.flow, lease_token=next_token())
    rec.lease_owner = owner
    _extend(rec, lease_ms)
    return replace(_lease(rec), previous_owner=previous)


def renew(rec: Record, owner: str, fencing_token: int, lease_ms: int) -> FlowLease:
    rec.check_writable()  # a deleted flow: FLOW_DELETED, as Postgres answers
    if not rec.lease_held(fencing_token) or rec.lease_owner != owner:
        raise rules.lease_lost(rec.flow.flow_id, fencing_token)
    _extend(rec, lease_ms)
    return _lease(rec)


def release(rec: Record, fencing_token: int) -> bool:
    if fencing_token != rec.flow.lease_token:
        return False
    rec.end_lease()
    return True


def _extend(rec: Record, lease_ms: int) -> None:
    rec.lease_deadline = time.monotonic() + lease_ms / 1000
    rec.lease_expires_at = datetime.now(UTC) + timedelta(milliseconds=lease_ms)


def _lease(rec: Record) -> FlowLease:
    assert rec.lease_owner is not None
    assert rec.lease_expires_at is not None
    assert rec.lease_deadline is not None
    left = max(0, int((rec.lease_deadline - time.monotonic()) * 1000))
    return FlowLease(
        rec.flow, rec.flow.lease_token, rec.lease_expires_at, rec.lease_owner, remaining_ms=left
    )
