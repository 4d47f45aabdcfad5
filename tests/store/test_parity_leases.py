"""Work leases on every implementation of the port: claims, fencing tokens, expiry, takeover,
renew and release.

Expiry is waited for, never slept for: a short lease (100 ms, the least store.proto allows) is
polled until another claimer can take it over, or until the clock has passed its
``expires_at``, within a bounded deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger_core.domain import (
    Append,
    ClaimRequest,
    Flow,
    FlowLease,
    FlowStatus,
    NewBranch,
    NewFlow,
)
from flowledger_core.ports import EventStore
from tests.store.helpers import append, ev, new_flow, read_all

# The shortest lease every implementation accepts: store.proto allows 100..600000 ms (the
# backends alone would take 1 ms).
SHORT_MS = 100
LONG_MS = 60_000
DEADLINE_S = 10.0

# Cases that read a flow's lease token from get_flow or a create answer.
NO_TOKEN_ON_THE_WIRE = pytest.mark.not_over_grpc(
    reason="Flow.lease_token is not on the wire (common.proto Flow has no lease token; "
    "flowledger_core.wire.store_client.flow_from_pb leaves it 0): the engine learns its tokens "
    "from the lease RPCs"
)


async def claim(
    store: EventStore, ns: str, owner: str, *flow_ids: str, limit: int = 10, lease_ms: int = LONG_MS
) -> tuple[FlowLease, ...]:
    return await store.claim_flows(ClaimRequest(owner, limit, lease_ms, (ns,), flow_ids))


async def take_over(store: EventStore, ns: str, owner: str, flow_id: str) -> FlowLease:
    """Claim ``flow_id`` as soon as its lease has expired (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while True:
        got = await claim(store, ns, owner, flow_id)
        if got:
            return got[0]
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        await asyncio.sleep(0.01)


async def past(moment: datetime) -> None:
    """Wait (bounded) until the wall clock is past ``moment`` by a margin."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while datetime.now(UTC) <= moment + timedelta(milliseconds=100):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def append_with(store: EventStore, ns: str, flow: Flow, token: int, cmd: str) -> None:
    version = (await store.get_flow(ns, flow.flow_id)).version
    await store.append(Append(ns, flow.flow_id, version, cmd, (ev(),), fencing_token=token))


@NO_TOKEN_ON_THE_WIRE
async def test_claims_lease_runnable_flows_once(store: EventStore, ns: str) -> None:
    queued = await new_flow(store, ns, "q")
    running = await new_flow(store, ns, "r", status=FlowStatus.RUNNING)
    for status in (FlowStatus.WAITING, FlowStatus.COMPLETED, FlowStatus.FAILED):
        await new_flow(store, ns, status.value, status=status)
    before = datetime.now(UTC)
    leases = await claim(store, ns, "replica-a")
    assert [lease.flow.flow_id for lease in leases] == [queued.flow_id, running.flow_id]
    tokens = [lease.fencing_token for lease in leases]
    assert len(set(tokens)) == 2
    assert min(tokens) >= 1
    for lease in leases:
        assert lease.owner == "replica-a"
        assert lease.flow.lease_token == lease.fencing_token
        assert lease.expires_at > before + timedelta(seconds=50)
        assert (await store.get_flow(ns, lease.flow.flow_id)).lease_token == lease.fencing_token
    # Held: nobody else gets them while the leases are live.
    assert await claim(store, ns, "replica-b") == ()
    # The holder writes with its token.
    await append_with(store, ns, queued, leases[0].fencing_token, "c1")
    assert len(await read_all(store, ns, queued.flow_id)) == 1


@NO_TOKEN_ON_THE_WIRE
async def test_concurrent_claimers_never_share_a_flow(store: EventStore, ns: str) -> None:
    flows = {(await new_flow(store, ns, f"f{i}")).flow_id for i in range(24)}
    start = asyncio.Event()

    async def claimer(i: int) -> tuple[FlowLease, ...]:
        await start.wait()
        return await claim(store, ns, f"replica-{i}", limit=5)

    tasks = [asyncio.create_task(claimer(i)) for i in range(4)]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    claimed = [lease.flow.flow_id for leases in results for lease in leases]
    assert len(claimed) == len(set(claimed)) > 0
    tokens = [lease.fencing_token for leases in results for lease in leases]
    assert len(tokens) == len(set(tokens))
    for i, leases in enumerate(results):
        for lease in leases:
            assert lease.owner == f"replica-{i}"
            assert (await store.get_flow(ns, lease.flow.flow_id)).lease_token == lease.fencing_token
    rest = await claim(store, ns, "sweeper", limit=100)
    assert {lease.flow.flow_id for lease in rest} == flows - set(claimed)


async def test_an_expired_lease_is_taken_over_and_fences_its_old_holder(
    store: EventStore, ns: str
) -> None:
    flow = await new_flow(store, ns)
    (old,) = await claim(store, ns, "replica-a", flow.flow_id, lease_ms=SHORT_MS)
    await append_with(store, ns, flow, old.fencing_token, "a-1")
    new = await take_over(store, ns, "replica-b", flow.flow_id)
    assert new.owner == "replica-b"
    assert new.fencing_token > old.fencing_token

    with pytest.raises(FailedPrecondition) as err:
        await append_with(store, ns, flow, old.fencing_token, "a-2")
    assert err.value.reason == "LEASE_LOST"
    assert err.value.metadata == {"flow_id": flow.flow_id, "fencing_token": str(old.fencing_token)}
    assert len(await read_all(store, ns, flow.flow_id)) == 1  # the refused append wrote nothing
    with pytest.raises(FailedPrecondition) as err:
        await store.renew_lease(ns, flow.flow_id, "replica-a", old.fencing_token, LONG_MS)
    assert err.value.reason == "LEASE_LOST"
    assert not await store.release_lease(ns, flow.flow_id, old.fencing_token)

    await append_with(store, ns, flow, new.fencing_token, "b-1")  # the new holder is unaffected
    assert (await store.get_flow(ns, flow.flow_id)).version == 2


async def test_an_expired_lease_cannot_be_renewed_or_written_with(
    store: EventStore, ns: str
) -> None:
    flow = await new_flow(store, ns)
    (lease,) = await claim(store, ns, "replica-a", flow.flow_id, lease_ms=SHORT_MS)
    await past(lease.expires_at)
    with pytest.raises(FailedPrecondition) as err:
        await store.renew_lease(ns, flow.flow_id, "replica-a", lease.fencing_token, LONG_MS)
    assert err.value.reason == "LEASE_LOST"
    with pytest.raises(FailedPrecondition) as err:
        await append_with(store, ns, flow, lease.fencing_token, "late")
    assert err.value.reason == "LEASE_LOST"
    assert await read_all(store, ns, flow.flow_id) == []


async def test_renewal_extends_a_live_lease_of_its_owner(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    (lease,) = await claim(store, ns, "replica-a", flow.flow_id)
    renewed = await store.renew_lease(ns, flow.flow_id, "replica-a", lease.fencing_token, 120_000)
    assert renewed.fencing_token == lease.fencing_token
    assert renewed.owner == "replica-a"
    assert renewed.expires_at > lease.expires_at + timedelta(seconds=30)
    with pytest.raises(FailedPrecondition) as err:
        await store.renew_lease(ns, flow.flow_id, "replica-b", lease.fencing_token, LONG_MS)
    assert err.value.reason == "LEASE_LOST"
    with pytest.raises(FailedPrecondition):
        await store.renew_lease(ns, flow.flow_id, "replica-a", lease.fencing_token + 1, LONG_MS)
    with pytest.raises(InvalidArgument):
        await store.renew_lease(ns, flow.flow_id, "replica-a", 0, LONG_MS)
    with pytest.raises(NotFound):
        await store.renew_lease(f"{ns}-x", flow.flow_id, "replica-a", lease.fencing_token, 1000)


@NO_TOKEN_ON_THE_WIRE
async def test_release_then_claim_again(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    (first,) = await claim(store, ns, "replica-a", flow.flow_id)
    assert await store.release_lease(ns, flow.flow_id, first.fencing_token)
    assert await store.release_lease(ns, flow.flow_id, first.fencing_token)  # idempotent
    assert (await store.get_flow(ns, flow.flow_id)).lease_token == first.fencing_token
    with pytest.raises(FailedPrecondition) as err:
        await append_with(store, ns, flow, first.fencing_token, "after-release")
    assert err.value.reason == "LEASE_LOST"
    with pytest.raises(FailedPrecondition):
        await store.renew_lease(ns, flow.flow_id, "replica-a", first.fencing_token, LONG_MS)

    (second,) = await claim(store, ns, "replica-b", flow.flow_id)
    assert second.fencing_token > first.fencing_token
    assert not await store.release_lease(ns, flow.flow_id, first.fencing_token)  # stale: no-op
    assert await claim(store, ns, "replica-c", flow.flow_id) == ()  # still held by b
    await append_with(store, ns, flow, second.fencing_token, "b")
    with pytest.raises(NotFound):
        await store.release_lease(ns, "00000000-0000-4000-8000-000000000000", 1)


async def test_a_claim_names_the_holder_it_took_over_from_only_after_an_expiry(
    store: EventStore, ns: str
) -> None:
    """previous_owner: the holder of a lease that expired unreleased; empty for a new flow, a
    released lease, a lease created with the flow and released, or a task worker's claim of a
    flow whose engine let go when it waited."""
    fresh = await new_flow(store, ns, "fresh")
    (first,) = await claim(store, ns, "replica-a", fresh.flow_id, lease_ms=SHORT_MS)
    assert first.previous_owner == ""
    taken = await take_over(store, ns, "replica-b", fresh.flow_id)
    assert taken.previous_owner == "replica-a"
    assert await store.release_lease(ns, fresh.flow_id, taken.fencing_token)
    (again,) = await claim(store, ns, "replica-c", fresh.flow_id, lease_ms=SHORT_MS)
    assert again.previous_owner == ""  # released, not taken over
    # The same owner claiming its own expired lease again is a takeover too.
    own = await take_over(store, ns, "replica-c", fresh.flow_id)
    assert own.previous_owner == "replica-c"
    renewed = await store.renew_lease(ns, fresh.flow_id, "replica-c", own.fencing_token, LONG_MS)
    assert renewed.previous_owner == ""

    created = await store.create_flow_with(
        NewFlow(ns, "leased", status=FlowStatus.QUEUED), lease=("replica-a", SHORT_MS)
    )
    assert created.lease is not None
    assert created.lease.previous_owner == ""
    assert (await take_over(store, ns, "replica-d", created.flow.flow_id)).previous_owner == (
        "replica-a"
    )

    # Waiting on a task queue: the engine releases, a worker claims; its expiry is taken over.
    queued = await new_flow(store, ns, "task")
    (engine,) = await claim(store, ns, "replica-a", queued.flow_id)
    await store.append(
        Append(ns, queued.flow_id, 0, "wait", (ev(),), new_status=FlowStatus.WAITING,
               task_queue="q", fencing_token=engine.fencing_token)
    )  # fmt: skip
    assert await store.release_lease(ns, queued.flow_id, engine.fencing_token)
    request = ClaimRequest("worker-1", 1, SHORT_MS, (ns,), task_queues=("q",))
    (worker,) = await store.claim_flows(request)
    assert worker.previous_owner == ""
    await past(worker.expires_at)
    (second,) = await store.claim_flows(replace(request, owner="worker-2"))
    assert second.previous_owner == "worker-1"


async def test_claims_order_by_when_flows_entered_their_status(store: EventStore, ns: str) -> None:
    """An append that sets no status leaves a flow's place in the claim order; one that sets a
    status moves it to the back (migration 0008: status_since, not the last write)."""
    first = await new_flow(store, ns, "first", status=FlowStatus.RUNNING)
    second = await new_flow(store, ns, "second", status=FlowStatus.RUNNING)
    third = await new_flow(store, ns, "third", status=FlowStatus.RUNNING)
    await append(store, ns, first.flow_id, 0)  # a plain append: first stays first
    await append(store, ns, second.flow_id, 0, status=FlowStatus.RUNNING)  # re-entered RUNNING
    assert (await store.get_flow(ns, first.flow_id)).updated_at > third.updated_at
    order = [lease.flow.flow_id for lease in await claim(store, ns, "a")]
    assert order == [first.flow_id, third.flow_id, second.flow_id]


async def test_filters_by_flow_id_and_namespace(store: EventStore, ns: str) -> None:
    mine = [await new_flow(store, ns, f"f{i}") for i in range(3)]
    theirs = await new_flow(store, f"{ns}-other", "f")
    got = await claim(store, ns, "a", mine[2].flow_id, theirs.flow_id)
    assert [lease.flow.flow_id for lease in got] == [mine[2].flow_id]
    got = await claim(store, ns, "a", limit=1)
    assert [lease.flow.flow_id for lease in got] == [mine[0].flow_id]  # least recently updated
    both = await store.claim_flows(ClaimRequest("b", 10, LONG_MS, (ns, f"{ns}-other")))
    assert {lease.flow.flow_id for lease in both} == {mine[1].flow_id, theirs.flow_id}
    with pytest.raises(InvalidArgument) as err:
        await claim(store, ns, "a", "not-a-uuid")
    assert [v.field for v in err.value.violations] == ["flow_ids[0]"]
    for bad in (ClaimRequest("", 1, 1000), ClaimRequest("a", 0, 1000), ClaimRequest("a", 1, 0)):
        with pytest.raises(InvalidArgument):
            await store.claim_flows(bad)


async def test_finished_waiting_and_deleted_flows_are_never_claimed(
    store: EventStore, ns: str
) -> None:
    done = await new_flow(store, ns, "done")
    await append(store, ns, done.flow_id, 0, ev(), status=FlowStatus.COMPLETED)
    cancelled = await new_flow(store, ns, "cancelled", status=FlowStatus.CANCELLED)
    waiting = await new_flow(store, ns, "waiting", status=FlowStatus.WAITING)
    parent = await new_flow(store, ns, "parent", status=FlowStatus.COMPLETED)
    branch, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 0, "b"))
    await store.delete_branch(ns, branch.flow_id)
    ids = [f.flow_id for f in (done, cancelled, waiting, parent)] + [branch.flow_id]
    assert await claim(store, ns, "a", *ids) == ()
    assert await claim(store, ns, "a") == ()
    # A waiting flow that runs again becomes claimable.
    await append(store, ns, waiting.flow_id, 0, ev(), status=FlowStatus.RUNNING)
    assert [lease.flow.flow_id for lease in await claim(store, ns, "a")] == [waiting.flow_id]


@NO_TOKEN_ON_THE_WIRE
async def test_create_can_lease_the_flow_it_creates(store: EventStore, ns: str) -> None:
    flow_id = str(uuid.uuid4())
    new = NewFlow(ns, "leased", flow_id=flow_id)
    before = datetime.now(UTC)
    created = await store.create_flow_with(new, lease=("replica-a", LONG_MS))
    flow, lease = created.flow, created.lease
    assert not created.existed
    assert lease is not None
    assert (lease.owner, lease.flow.flow_id) == ("replica-a", flow_id)
    assert lease.fencing_token >= 1
    assert flow.lease_token == lease.flow.lease_token == lease.fencing_token
    assert lease.expires_at > before + timedelta(seconds=50)
    assert await claim(store, ns, "replica-b", flow_id) == ()  # held from the start
    await append_with(store, ns, flow, lease.fencing_token, "first")
    await store.renew_lease(ns, flow_id, "replica-a", lease.fencing_token, LONG_MS)

    # A repeat finds the flow and takes no lease: the first one stands.
    again = await store.create_flow_with(new, lease=("replica-b", LONG_MS))
    assert again.existed
    assert again.lease is None
    assert again.flow.lease_token == lease.fencing_token
    assert await claim(store, ns, "replica-b", flow_id) == ()


@pytest.mark.not_over_grpc(
    reason="the store service names the wire's field (lease_owner) where the backends name "
    "the port's (owner)"
)
async def test_a_bad_lease_request_creates_nothing(store: EventStore, ns: str) -> None:
    flow_id = str(uuid.uuid4())
    new = NewFlow(ns, "bad", flow_id=flow_id)
    for owner, ms, field in (("", LONG_MS, "owner"), ("a", 0, "lease_ms")):
        with pytest.raises(InvalidArgument) as err:
            await store.create_flow_with(new, lease=(owner, ms))
        assert [v.field for v in err.value.violations] == [field]
    with pytest.raises(NotFound):
        await store.get_flow(ns, flow_id)


@NO_TOKEN_ON_THE_WIRE
@pytest.mark.parametrize("status", [FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED])
async def test_the_append_that_ends_a_flow_releases_its_lease(
    store: EventStore, ns: str, status: FlowStatus
) -> None:
    flow = await new_flow(store, ns)
    (lease,) = await claim(store, ns, "replica-a", flow.flow_id)
    token = lease.fencing_token
    # A status that does not end the flow keeps the lease.
    await store.append(
        Append(ns, flow.flow_id, 0, "run", (ev(),), new_status=FlowStatus.RUNNING,
               fencing_token=token)
    )  # fmt: skip
    await store.renew_lease(ns, flow.flow_id, "replica-a", token, LONG_MS)
    await store.append(
        Append(ns, flow.flow_id, 1, "end", (ev(),), new_status=status, fencing_token=token)
    )
    with pytest.raises(FailedPrecondition) as err:
        await store.renew_lease(ns, flow.flow_id, "replica-a", token, LONG_MS)
    assert err.value.reason == "LEASE_LOST"
    ended = await store.get_flow(ns, flow.flow_id)
    assert (ended.status, ended.lease_token) == (status, token)  # the token stays
    assert await claim(store, ns, "replica-b", flow.flow_id) == ()  # ended: never claimed


async def test_a_lease_says_how_long_it_has_left_by_the_store_s_clock(
    store: EventStore, ns: str
) -> None:
    """What the engine dates its local expiry from (issue 22): a claim's and a renewal's
    ``remaining_ms`` is at most the lease asked for and more than none, whatever the caller's
    clock; a lease of 60 s answered at once has nearly all of it left."""
    flow = await new_flow(store, ns)
    (lease,) = await store.claim_flows(ClaimRequest("a", 1, 60_000, (ns,), (flow.flow_id,)))
    assert lease.remaining_ms is not None
    assert 50_000 < lease.remaining_ms <= 60_000
    renewed = await store.renew_lease(ns, flow.flow_id, "a", lease.fencing_token, 30_000)
    assert renewed.remaining_ms is not None
    assert 20_000 < renewed.remaining_ms <= 30_000
    created = await store.create_flow_with(NewFlow(ns, "f"), lease=("a", 45_000))
    assert created.lease is not None
    assert created.lease.remaining_ms is not None
    assert 35_000 < created.lease.remaining_ms <= 45_000
