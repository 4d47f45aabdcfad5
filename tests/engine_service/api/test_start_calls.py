"""What a StartFlow costs the store (decision 0019): the replica that receives it creates the
flow leased to itself with FlowInitialized and the first StepStarted in one create call, runs it
without a claim or a re-read, and releases nothing (the append that ends the flow released the
lease). Both backends, the real store service over gRPC; the engine's store client is counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from engine_service.server import serve
from engine_service.store_client.client import GrpcEventStore
from flowledger.client import FlowledgerClient
from flowledger.errors import FailedPrecondition
from flowledger_core.domain import (
    Append,
    AppendResult,
    ClaimRequest,
    CreatedFlow,
    EventType,
    FlowLease,
    NewFlow,
    StoredEvent,
)
from flowledger_core.ports import EventStore
from tests.engine_service.api.conftest import (
    BOUND_S,
    engine_settings,
    published,
    registry_for_tests,
)
from tests.engine_service.helpers import DelegatingStore
from tests.fixtures.store_client import FAST
from tests.fixtures.store_server import running_store


class Counting(DelegatingStore):
    """Counts the store calls that make and run a flow."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.claimed: list[str] = []

    async def create_flow_with(
        self, new: NewFlow, *, lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:  # fmt: skip
        self.calls["create_flow_with"] += 1
        return await super().create_flow_with(new, lease=lease, initial=initial)

    async def append(self, cmd: Append) -> AppendResult:
        self.calls["append"] += 1
        return await super().append(cmd)

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        leases = await super().claim_flows(req)
        self.claimed.extend(lease.flow.flow_id for lease in leases)
        return leases

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        self.calls["release_lease"] += 1
        return await super().release_lease(namespace, flow_id, fencing_token)


@contextlib.asynccontextmanager
async def counted_replica(store_addr: str) -> AsyncIterator[tuple[Counting, FlowledgerClient]]:
    grpc_store = GrpcEventStore(store_addr, FAST)
    counting = Counting(grpc_store)
    try:
        server = await serve(
            engine_settings(store_addr), store=counting, registry=registry_for_tests()
        )
        try:
            async with FlowledgerClient(server.address, timeout=BOUND_S) as client:
                yield counting, client
        finally:
            await server.stop(grace=2.0)
    finally:
        await grpc_store.close()


async def test_a_started_flow_costs_one_create_and_an_append_per_step(
    store_backend: EventStore, ns: str
) -> None:
    async with running_store(store_backend) as store, counted_replica(
        store.server.address
    ) as (counting, client):
        await published(client, ns, "hello")
        counting.calls.clear()
        started = await client.start_flow(ns, "hello", {"name": "ana"})
        async with asyncio.timeout(BOUND_S):
            end = await client.wait_for_end(ns, started.flow_id)
        assert end.status.terminal
        assert [e.type.value for e in end.events] == ["flow_completed"]

        events = await read_log(store_backend, ns, started.flow_id)
        # greet, shout, done: the create call's append, then one per step.
        assert counting.calls == Counter({"create_flow_with": 1, "append": 3})
        assert started.flow_id not in counting.claimed
        kinds = [e.type for e in events]
        assert kinds[:2] == [EventType.FLOW_INITIALIZED, EventType.STEP_STARTED]
        assert kinds[-1] is EventType.FLOW_COMPLETED
        assert events[0].command_id == events[1].command_id  # one append, one commit
        assert len({e.command_id for e in events}) == 4

        # The append that completed it took the lease with it.
        flow = await store_backend.get_flow(ns, started.flow_id)
        with pytest.raises(FailedPrecondition) as err:
            await store_backend.renew_lease(ns, flow.flow_id, "anyone", flow.lease_token, 1000)
        assert err.value.reason == "LEASE_LOST"


async def test_a_replica_without_a_free_slot_creates_the_flow_unleased(
    store_backend: EventStore, ns: str
) -> None:
    """No free slot: the flow is created without a lease and without a StepStarted; it runs
    once a slot frees (the work loop claims it)."""
    async with running_store(store_backend) as store:
        full = await serve(
            engine_settings(store.server.address, max_concurrent_flows=1),
            registry=registry_for_tests(),
        )
        try:
            async with FlowledgerClient(full.address, timeout=BOUND_S) as client:
                await published(client, ns, "hello")
                with full.worker.start_slot() as held:  # the replica's only slot
                    assert held is not None
                    started = await client.start_flow(ns, "hello", {"name": "bo"})
                    events = await read_log(store_backend, ns, started.flow_id)
                    assert [e.type for e in events] == [EventType.FLOW_INITIALIZED]
                    flow = await store_backend.get_flow(ns, started.flow_id)
                    claimed = await store_backend.claim_flows(
                        ClaimRequest("probe", 1, 1000, (ns,), (started.flow_id,))
                    )
                    assert [lease.flow.flow_id for lease in claimed] == [flow.flow_id]
                    await store_backend.release_lease(ns, flow.flow_id, claimed[0].fencing_token)
                view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
                assert view.status.terminal
        finally:
            await full.stop(grace=2.0)


async def read_log(store: EventStore, ns: str, flow_id: str) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async for chunk in store.read_events(ns, flow_id):
        out.extend(chunk)
    return out
