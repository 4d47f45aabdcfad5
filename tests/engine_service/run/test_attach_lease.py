"""A handle that made a flow goes on under a lease claimed afterwards (``attach_lease``), and
reports what it appended (``on_append``), over both backends."""

from __future__ import annotations

import pytest

from engine_service.definitions.samples import chem_flow
from engine_service.run.engine import Engine
from engine_service.run.lease import LeaseLost
from engine_service.steps.registry import StepRegistry
from flowledger.errors import InvalidArgument
from flowledger_core.domain import StoredEvent
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import normalized
from tests.engine_service.run.test_leases import claim, claim_when_expired


async def read_all(store: EventStore, ns: str, flow_id: str) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async for chunk in store.read_events(ns, flow_id):
        out.extend(chunk)
    return out


async def test_the_creating_handle_runs_under_a_later_lease(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    lease = await claim(store, ns, run.flow_id, "replica-a", 60_000)
    run.attach_lease(lease.fencing_token)
    assert run.fencing_token == lease.fencing_token
    assert (await run.run_to_end()).completed

    reference = await Engine(store, registry=registry).run(chem_flow(), namespace=ns + "-ref")
    assert await run.flow_fingerprint() == await reference.flow_fingerprint()


async def test_the_lease_token_only_grows(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    run.attach_lease(5)
    for token in (5, 4, 0):
        with pytest.raises(InvalidArgument):
            run.attach_lease(token)
    assert run.fencing_token == 5


async def test_a_handle_whose_later_lease_was_taken_stops(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    lease_a = await claim(store, ns, run.flow_id, "replica-a", 1)
    run.attach_lease(lease_a.fencing_token)
    await claim_when_expired(store, ns, run.flow_id, "replica-b")
    with pytest.raises(LeaseLost):
        await run.next()
    assert run.lease_lost


async def test_on_append_reports_exactly_what_the_log_holds(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    reported: list[StoredEvent] = []
    run.on_append = reported.extend
    await run.run_to_end()

    stored = await read_all(store, ns, run.flow_id)
    after_init = stored[1:]  # FlowInitialized was appended before the observer was set
    assert normalized(reported) == normalized(after_init)
    assert [(e.seq, e.flow_id, e.command_id) for e in reported] == [
        (e.seq, e.flow_id, e.command_id) for e in after_init
    ]
