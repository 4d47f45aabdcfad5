"""Waiting flows on both backends: wake_at and task_queue, the claims that follow them.

Timers are tested without sleeping: a wake_at far in the past is due, one far in the future is
not, and moving a flow from one to the other is an append (the replace rule).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from flowledger.errors import InvalidArgument
from flowledger_core.domain import (
    Append,
    ClaimRequest,
    EventType,
    Flow,
    FlowLease,
    FlowStatus,
    NewBranch,
)
from flowledger_core.ports import EventStore
from tests.store.helpers import command_id, ev, new_flow, read_all

LONG_MS = 60_000
PAST = datetime(2001, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)
LONG_PAST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE = datetime.now(UTC) + timedelta(days=365)


async def set_status(
    store: EventStore,
    ns: str,
    flow: Flow | str,
    status: FlowStatus | None = FlowStatus.WAITING,
    *,
    wake_at: datetime | None = None,
    queue: str | None = None,
) -> Flow:
    """Append one event (with ``status`` when given) at the flow's head; the flow after it."""
    flow_id = flow if isinstance(flow, str) else flow.flow_id
    version = (await store.get_flow(ns, flow_id)).version
    await store.append(
        Append(ns, flow_id, version, command_id(), (ev(EventType.TIMER_STARTED),),
               new_status=status, wake_at=wake_at, task_queue=queue)
    )  # fmt: skip
    return await store.get_flow(ns, flow_id)


async def engines(store: EventStore, ns: str, *ids: str, limit: int = 10) -> list[str]:
    leases = await store.claim_flows(ClaimRequest("engine", limit, LONG_MS, (ns,), ids))
    return [lease.flow.flow_id for lease in leases]


async def workers(
    store: EventStore, ns: str, *queues: str, limit: int = 10
) -> tuple[FlowLease, ...]:
    return await store.claim_flows(ClaimRequest("worker", limit, LONG_MS, (ns,), (), queues))


async def test_engines_claim_a_waiting_flow_once_its_wake_at_has_passed(
    store: EventStore, ns: str
) -> None:
    due = await set_status(store, ns, await new_flow(store, ns, "due"), wake_at=PAST)
    later = await set_status(store, ns, await new_flow(store, ns, "later"), wake_at=FUTURE)
    parked = await set_status(store, ns, await new_flow(store, ns, "parked"))  # no wake_at
    assert (due.status, due.wake_at, due.task_queue) == (FlowStatus.WAITING, PAST, None)
    assert (later.wake_at, parked.wake_at) == (FUTURE, None)

    leases = await store.claim_flows(ClaimRequest("engine", 10, LONG_MS, (ns,)))
    assert [lease.flow.flow_id for lease in leases] == [due.flow_id]
    # A claim does not change the flow: still waiting, same wake_at (the engine moves it on).
    assert (leases[0].flow.status, leases[0].flow.wake_at) == (FlowStatus.WAITING, PAST)
    assert await engines(store, ns) == []  # leased now

    # "Before" and "after" its wake_at, without waiting: a new wake_at in the past makes the
    # future timer due (and the no-timer flow too).
    await set_status(store, ns, later, wake_at=PAST)
    await set_status(store, ns, parked, wake_at=PAST)
    assert sorted(await engines(store, ns)) == sorted([later.flow_id, parked.flow_id])


async def test_task_workers_claim_by_queue_whatever_the_wake_at(store: EventStore, ns: str) -> None:
    task = await set_status(
        store, ns, await new_flow(store, ns, "task"), wake_at=FUTURE, queue="gpu.large:v1"
    )
    other = await set_status(store, ns, await new_flow(store, ns, "other"), queue="cpu")
    queued = await new_flow(store, ns, "queued")
    assert (task.wake_at, task.task_queue) == (FUTURE, "gpu.large:v1")

    # Engines leave a flow on a task queue alone until its wake_at (say a timeout) is due.
    assert await engines(store, ns, task.flow_id, other.flow_id) == []
    # Workers take only waiting flows of their queues; never a queued or running one.
    assert await workers(store, ns, "nope") == ()
    got = await workers(store, ns, "nope", "gpu.large:v1")
    assert [(x.flow.flow_id, x.owner) for x in got] == [(task.flow_id, "worker")]
    assert got[0].flow.task_queue == "gpu.large:v1"
    assert await workers(store, ns, "gpu.large:v1") == ()  # leased
    assert [x.flow.flow_id for x in await workers(store, ns, "cpu", "gpu.large:v1")] == [
        other.flow_id
    ]
    assert await engines(store, ns) == [queued.flow_id]


async def test_engines_take_a_task_flow_whose_wake_at_passed_and_then_workers_do_not(
    store: EventStore, ns: str
) -> None:
    flow = await set_status(store, ns, await new_flow(store, ns), wake_at=PAST, queue="q")
    assert await engines(store, ns) == [flow.flow_id]
    assert await workers(store, ns, "q") == ()  # one live lease at a time, whoever holds it


async def test_setting_the_status_replaces_wake_at_and_task_queue(
    store: EventStore, ns: str
) -> None:
    flow = await new_flow(store, ns)
    assert (flow.wake_at, flow.task_queue) == (None, None)
    flow = await set_status(store, ns, flow, wake_at=FUTURE, queue="q1")
    assert (flow.status, flow.wake_at, flow.task_queue) == (FlowStatus.WAITING, FUTURE, "q1")
    # Without a status both stay (a step event recorded while the flow waits).
    flow = await set_status(store, ns, flow, None)
    assert (flow.status, flow.wake_at, flow.task_queue, flow.version) == (
        FlowStatus.WAITING, FUTURE, "q1", 2,
    )  # fmt: skip
    # With a status they are replaced: an unset field clears.
    flow = await set_status(store, ns, flow, wake_at=PAST)
    assert (flow.wake_at, flow.task_queue) == (PAST, None)
    flow = await set_status(store, ns, flow, queue="q2")
    assert (flow.wake_at, flow.task_queue) == (None, "q2")
    flow = await set_status(store, ns, flow, FlowStatus.RUNNING, wake_at=FUTURE)
    assert (flow.status, flow.wake_at, flow.task_queue) == (FlowStatus.RUNNING, FUTURE, None)
    flow = await set_status(store, ns, flow, FlowStatus.RUNNING)
    assert (flow.wake_at, flow.task_queue) == (None, None)
    # A wake_at in any time zone is the same instant.
    plus_two = timezone(timedelta(hours=2))
    flow = await set_status(store, ns, flow, wake_at=PAST.astimezone(plus_two))
    assert flow.wake_at == PAST
    assert flow.wake_at is not None
    assert flow.wake_at.utcoffset() is not None
    listed = await store.get_flow(ns, flow.flow_id)
    assert (listed.wake_at, listed.task_queue) == (PAST, None)


async def test_concurrent_appends_apply_the_last_status_setting_one(
    store: EventStore, ns: str
) -> None:
    """Appends racing to one flow may share a group-commit batch: each sees the one before."""
    flow = await new_flow(store, ns)
    steps = [
        (FlowStatus.WAITING, FUTURE, "q1"),
        (None, None, None),
        (FlowStatus.WAITING, PAST, "q2"),
        (None, None, None),
    ]
    await asyncio.gather(*(
        store.append(Append(ns, flow.flow_id, i, f"c{i}", (ev(),), new_status=s, wake_at=w,
                            task_queue=q))
        for i, (s, w, q) in enumerate(steps)
    ))  # fmt: skip
    got = await store.get_flow(ns, flow.flow_id)
    assert (got.version, got.status, got.wake_at, got.task_queue) == (
        4, FlowStatus.WAITING, PAST, "q2",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "wake_at", "queue", "field"),
    [
        (None, PAST, None, "wake_at"),
        (None, None, "q", "task_queue"),
        (FlowStatus.RUNNING, None, "q", "task_queue"),
        (FlowStatus.COMPLETED, PAST, "q", "task_queue"),
        (FlowStatus.WAITING, None, "", "task_queue"),
        (FlowStatus.WAITING, None, "with space", "task_queue"),
        (FlowStatus.WAITING, None, "é", "task_queue"),
        (FlowStatus.WAITING, None, "q" * 129, "task_queue"),
        (FlowStatus.WAITING, datetime(2001, 1, 1), None, "wake_at"),  # naive: which instant?
    ],
)
async def test_misplaced_or_malformed_wait_fields_write_nothing(
    store: EventStore,
    ns: str,
    status: FlowStatus | None,
    wake_at: datetime | None,
    queue: str | None,
    field: str,
) -> None:
    flow = await new_flow(store, ns)
    bad = Append(ns, flow.flow_id, 0, "c1", (ev(),), new_status=status, wake_at=wake_at,
                 task_queue=queue)  # fmt: skip
    with pytest.raises(InvalidArgument) as err:
        await store.append(bad)
    assert [v.field for v in err.value.violations] == [field]
    after = await store.get_flow(ns, flow.flow_id)
    assert (after.version, after.status, after.wake_at, after.task_queue) == (
        0, FlowStatus.QUEUED, None, None,
    )  # fmt: skip
    assert await read_all(store, ns, flow.flow_id) == []
    # The command id was not used up.
    await store.append(Append(ns, flow.flow_id, 0, "c1", (ev(),)))


async def test_a_longest_queue_name_is_fine(store: EventStore, ns: str) -> None:
    name = "A-z0.9_:" * 16
    flow = await set_status(store, ns, await new_flow(store, ns), queue=name)
    assert flow.task_queue == name
    assert [x.flow.flow_id for x in await workers(store, ns, name)] == [flow.flow_id]


@pytest.mark.parametrize(
    ("queues", "field"),
    [
        (("",), "task_queues[0]"),
        (("ok", "not ok"), "task_queues[1]"),
        (("q" * 129,), "task_queues[0]"),
        pytest.param(
            tuple(f"q{i}" for i in range(1001)),
            "task_queues",
            marks=pytest.mark.not_over_grpc(
                reason="the store service refuses a claim past its size limits "
                "RESOURCE_EXHAUSTED before the backend's InvalidArgument"
            ),
        ),
    ],
)
async def test_claims_refuse_malformed_queue_names(
    store: EventStore, ns: str, queues: tuple[str, ...], field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.claim_flows(ClaimRequest("worker", 1, LONG_MS, (ns,), (), queues))
    assert [v.field for v in err.value.violations] == [field]


async def test_engine_claims_order_by_when_a_flow_became_claimable(
    store: EventStore, ns: str
) -> None:
    """QUEUED/RUNNING flows since their last write, WAITING ones since their wake_at."""
    q1 = await new_flow(store, ns, "q1")
    q2 = await new_flow(store, ns, "q2", status=FlowStatus.RUNNING)
    # Written after q1 and q2 but due since 2000: first. Due just after q2's last write: after q2.
    oldest = await set_status(store, ns, await new_flow(store, ns, "w-old"), wake_at=LONG_PAST)
    recent = await set_status(store, ns, await new_flow(store, ns, "w-recent"),
                              wake_at=q2.updated_at + timedelta(microseconds=1))  # fmt: skip
    await set_status(store, ns, await new_flow(store, ns, "w-later"), wake_at=FUTURE)
    expected = [oldest.flow_id, q1.flow_id, q2.flow_id, recent.flow_id]
    # In pages, each the best of what is left.
    assert await engines(store, ns, limit=2) == expected[:2]
    assert await engines(store, ns, limit=1) == expected[2:3]
    assert await engines(store, ns, limit=10) == expected[3:]


async def test_worker_claims_order_by_how_long_flows_have_waited(
    store: EventStore, ns: str
) -> None:
    first = await set_status(store, ns, await new_flow(store, ns, "a"), wake_at=FUTURE, queue="q")
    second = await set_status(store, ns, await new_flow(store, ns, "b"), wake_at=PAST, queue="r")
    third = await set_status(store, ns, await new_flow(store, ns, "c"), queue="q")
    got = await workers(store, ns, "q", "r", limit=2)
    assert [x.flow.flow_id for x in got] == [first.flow_id, second.flow_id]
    assert [x.flow.flow_id for x in await workers(store, ns, "q", "r")] == [third.flow_id]


async def test_claim_filters_apply_to_task_claims(store: EventStore, ns: str) -> None:
    mine = await set_status(store, ns, await new_flow(store, ns, "a"), queue="q")
    also = await set_status(store, ns, await new_flow(store, ns, "b"), queue="q")
    theirs = await set_status(store, f"{ns}-x", await new_flow(store, f"{ns}-x"), queue="q")
    got = await store.claim_flows(
        ClaimRequest("worker", 10, LONG_MS, (ns,), (also.flow_id, theirs.flow_id), ("q",))
    )
    assert [x.flow.flow_id for x in got] == [also.flow_id]
    assert [x.flow.flow_id for x in await workers(store, ns, "q")] == [mine.flow_id]


async def test_a_deleted_waiting_flow_is_never_claimed(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns, "parent", status=FlowStatus.COMPLETED)
    branch, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 0, "b"))
    await set_status(store, ns, branch, wake_at=PAST, queue="q")
    await store.delete_branch(ns, branch.flow_id)
    assert await engines(store, ns) == []
    assert await workers(store, ns, "q") == ()


async def test_the_cancel_request_event_type_is_stored(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await store.append(
        Append(ns, flow.flow_id, 0, "c1", (ev(EventType.FLOW_CANCEL_REQUESTED, by="me"),))
    )
    [event] = await read_all(store, ns, flow.flow_id)
    assert (event.type, event.type.variant) == (EventType.FLOW_CANCEL_REQUESTED, "A")


async def test_racing_workers_and_engines_never_share_a_flow(store: EventStore, ns: str) -> None:
    # Half on a queue with a due wake_at (both kinds of claimer want them), half queue only.
    flows = set()
    for i in range(16):
        flow = await set_status(store, ns, await new_flow(store, ns, f"f{i}"),
                                wake_at=PAST if i % 2 else None, queue="q")  # fmt: skip
        flows.add(flow.flow_id)
    start = asyncio.Event()

    async def claimer(i: int) -> tuple[FlowLease, ...]:
        await start.wait()
        queues = ("q",) if i % 2 else ()
        return await store.claim_flows(ClaimRequest(f"c{i}", 3, LONG_MS, (ns,), (), queues))

    tasks = [asyncio.create_task(claimer(i)) for i in range(6)]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    claimed = [x.flow.flow_id for leases in results for x in leases]
    assert len(claimed) == len(set(claimed)) > 0
    for i, leases in enumerate(results):
        if i % 2 == 0:  # engines only ever got due ones
            assert all(x.flow.wake_at == PAST for x in leases)
    rest = await workers(store, ns, "q", limit=100)
    assert {x.flow.flow_id for x in rest} == flows - set(claimed)
