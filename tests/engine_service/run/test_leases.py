"""Fencing in the runner, over both backends' real leases: once the store refuses a run's token
(another replica claimed the flow), the run raises LeaseLost, never retries and never writes
again; the new holder finishes the flow with the uninterrupted fingerprint."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from engine_service.core.events import StepFinished
from engine_service.definitions.samples import chem_flow
from engine_service.run.engine import Engine
from engine_service.run.lease import LeaseLost
from engine_service.steps.registry import StepRegistry
from flowledger.errors import FailedPrecondition
from flowledger_core.domain import Append, AppendResult, ClaimRequest, FlowLease
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore
from tests.engine_service.run.test_engine import GOLDEN

LONG_MS = 60_000


async def claim(store: EventStore, ns: str, flow_id: str, owner: str, lease_ms: int) -> FlowLease:
    leases = await store.claim_flows(
        ClaimRequest(owner, 1, lease_ms, namespaces=(ns,), flow_ids=(flow_id,))
    )
    assert [lease.flow.flow_id for lease in leases] == [flow_id]
    return leases[0]


async def claim_when_expired(store: EventStore, ns: str, flow_id: str, owner: str) -> FlowLease:
    """Claim the flow as soon as its current lease has expired (bounded wait)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leases = await store.claim_flows(
            ClaimRequest(owner, 1, LONG_MS, namespaces=(ns,), flow_ids=(flow_id,))
        )
        if leases:
            return leases[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the lease never expired")


def counting(store: EventStore, appends: list[str]) -> DelegatingStore:
    async def count(cmd: Append, inner: AppendFn) -> AppendResult:
        appends.append(cmd.command_id)
        return await inner(cmd)

    return DelegatingStore(store, count)


async def test_a_run_whose_flow_was_claimed_by_another_stops_for_good(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    flow_id = (await Engine(store, registry=registry).start(chem_flow(), namespace=ns)).flow_id
    lease_a = await claim(store, ns, flow_id, "replica-a", LONG_MS)
    appends: list[str] = []
    run_a = await Engine(counting(store, appends), registry=registry).attach(
        flow_id, namespace=ns, fencing_token=lease_a.fencing_token
    )
    assert run_a.fencing_token == lease_a.fencing_token
    assert (await run_a.next()) is not None  # seed, under a's lease
    # a's lease ends (released here; expiry is the other test) and b claims the flow.
    assert await store.release_lease(ns, flow_id, lease_a.fencing_token)
    lease_b = await claim(store, ns, flow_id, "replica-b", LONG_MS)
    assert lease_b.fencing_token > lease_a.fencing_token
    before = len(appends)
    with pytest.raises(LeaseLost) as exc:
        await run_a.next()
    assert isinstance(exc.value, FailedPrecondition)
    assert exc.value.reason == "LEASE_LOST"
    assert len(appends) == before + 1  # one refused write, not retried
    assert run_a.lease_lost
    for attempt in (run_a.next(), run_a.run_to_end(), run_a.next(start_next=True)):
        with pytest.raises(LeaseLost):
            await attempt
    assert len(appends) == before + 1  # and nothing tried since
    assert (await run_a.state()).steps[1].step_id == "split"  # reading still works

    run_b = await Engine(store, registry=registry).attach(
        flow_id, namespace=ns, fencing_token=lease_b.fencing_token
    )
    final = await run_b.run_to_end()
    assert final.flow_fingerprint == GOLDEN["chem"].flow
    finished = Counter(
        e.event.step_id for e in await run_b.events() if isinstance(e.event, StepFinished)
    )
    assert finished == Counter(seed=1, split=1, print_and_count=1)
    assert await store.release_lease(ns, flow_id, lease_b.fencing_token)


async def test_an_expired_lease_taken_over_fences_the_old_run(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    engine = Engine(store, registry=registry)
    flow_id = (await engine.start(chem_flow(), namespace=ns)).flow_id
    lease_a = await claim(store, ns, flow_id, "replica-a", 1)  # expires at once
    lease_b = await claim_when_expired(store, ns, flow_id, "replica-b")
    run_a = await engine.attach(flow_id, namespace=ns, fencing_token=lease_a.fencing_token)
    with pytest.raises(LeaseLost):
        await run_a.run_to_end()
    assert await run_a.event_variants() == "I"
    run_b = await engine.attach(flow_id, namespace=ns, fencing_token=lease_b.fencing_token)
    assert (await run_b.run_to_end()).flow_fingerprint == GOLDEN["chem"].flow
