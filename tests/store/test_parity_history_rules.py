"""The rules of a flow's history on both backends alike (store_service/adapters/flow_rules.py):
an ended flow accepts no more events, a prune that cuts an ended flow's ending reopens it
(docs/decisions/0022-prune-and-terminal-flows.md), DeleteBranch deletes branches only."""

from __future__ import annotations

import uuid

import pytest

from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger_core.domain import (
    Append,
    ClaimRequest,
    EventType,
    FlowStatus,
    NewBranch,
    NewFlow,
    Prune,
)
from flowledger_core.ports import EventStore
from tests.store.helpers import append, command_id, ev, new_flow, read_all

ENDINGS = [
    (FlowStatus.COMPLETED, EventType.FLOW_COMPLETED),
    (FlowStatus.FAILED, EventType.FLOW_FAILED),
    (FlowStatus.CANCELLED, EventType.FLOW_CANCELLED),
]


async def ended_flow(store: EventStore, ns: str, status: FlowStatus, ending: EventType) -> str:
    flow = await new_flow(store, ns, status=FlowStatus.RUNNING)
    await append(store, ns, flow.flow_id, 0, ev(n=1), ev(n=2))
    await append(store, ns, flow.flow_id, 2, ev(ending), status=status)
    return flow.flow_id


@pytest.mark.parametrize(("status", "ending"), ENDINGS)
async def test_an_ended_flow_accepts_no_more_events(
    store: EventStore, ns: str, status: FlowStatus, ending: EventType
) -> None:
    flow_id = await ended_flow(store, ns, status, ending)
    for new_status in (None, FlowStatus.RUNNING, status):
        with pytest.raises(FailedPrecondition) as caught:
            await append(store, ns, flow_id, 3, ev(EventType.STEP_STARTED), status=new_status)
        assert caught.value.reason == "FLOW_ENDED"
        assert caught.value.metadata == {"flow_id": flow_id, "status": status.value}
        assert "branch" in caught.value.message
    flow = await store.get_flow(ns, flow_id)
    assert (flow.version, flow.status) == (3, status)
    assert [e.type for e in await read_all(store, ns, flow_id)][-1] is ending


async def test_a_repeat_of_the_ending_still_answers(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    cmd = command_id()
    first = await append(
        store, ns, flow.flow_id, 0, ev(EventType.FLOW_COMPLETED), cmd=cmd,
        status=FlowStatus.COMPLETED,
    )  # fmt: skip
    again = await append(
        store, ns, flow.flow_id, 0, ev(EventType.FLOW_COMPLETED), cmd=cmd,
        status=FlowStatus.COMPLETED,
    )  # fmt: skip
    assert again.duplicate
    assert (again.first_version, again.last_version) == (first.first_version, 1)


async def test_a_branch_of_an_ended_flow_goes_on(store: EventStore, ns: str) -> None:
    flow_id = await ended_flow(store, ns, FlowStatus.COMPLETED, EventType.FLOW_COMPLETED)
    branch, _ = await store.create_branch(
        NewBranch(ns, flow_id, 2, "retry", status=FlowStatus.RUNNING)
    )
    result = await append(store, ns, branch.flow_id, 2, ev(n=3))
    assert result.last_version == 3


async def test_a_flow_cannot_be_created_ended_with_first_events(store: EventStore, ns: str) -> None:
    new = NewFlow(ns, "f", flow_id=str(uuid.uuid4()), status=FlowStatus.COMPLETED)
    first = Append("", "", 0, command_id(), (ev(),))
    with pytest.raises(InvalidArgument) as caught:
        await store.create_flow_with(new, initial=first)
    assert [v.field for v in caught.value.violations] == ["status"]
    assert new.flow_id is not None
    with pytest.raises(NotFound):
        await store.get_flow(ns, new.flow_id)


@pytest.mark.parametrize(("status", "ending"), ENDINGS)
async def test_pruning_an_ended_flow_reopens_it(
    store: EventStore, ns: str, status: FlowStatus, ending: EventType
) -> None:
    flow_id = await ended_flow(store, ns, status, ending)
    pruned, _ = await store.prune(Prune(ns, flow_id, 2, 3, command_id()))
    assert (pruned.status, pruned.version, pruned.wake_at, pruned.task_queue) == (
        FlowStatus.RUNNING, 2, None, None,
    )  # fmt: skip
    assert ending not in [e.type for e in await read_all(store, ns, flow_id)]
    # Claimable again (an ended flow never is), and it takes events again.
    (lease,) = await store.claim_flows(ClaimRequest("engine-1", 10, 30_000, flow_ids=(flow_id,)))
    assert lease.flow.flow_id == flow_id
    await store.append(
        Append(ns, flow_id, 2, command_id(), (ev(n=3),), fencing_token=lease.fencing_token)
    )
    assert (await store.get_flow(ns, flow_id)).version == 3


async def test_a_prune_that_cuts_nothing_leaves_an_ended_flow_ended(
    store: EventStore, ns: str
) -> None:
    flow_id = await ended_flow(store, ns, FlowStatus.FAILED, EventType.FLOW_FAILED)
    pruned, _ = await store.prune(Prune(ns, flow_id, 3, 3, command_id()))
    assert (pruned.status, pruned.version, pruned.generation) == (FlowStatus.FAILED, 3, 1)
    with pytest.raises(FailedPrecondition):
        await append(store, ns, flow_id, 3, ev())


async def test_a_prune_of_a_flow_that_has_not_ended_keeps_its_status(
    store: EventStore, ns: str
) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(n=1), ev(n=2), status=FlowStatus.WAITING)
    pruned, _ = await store.prune(Prune(ns, flow.flow_id, 1, 2, command_id()))
    assert pruned.status is FlowStatus.WAITING


async def test_delete_branch_refuses_a_root_flow(store: EventStore, ns: str) -> None:
    root = await new_flow(store, ns)
    await append(store, ns, root.flow_id, 0, ev())
    with pytest.raises(FailedPrecondition) as caught:
        await store.delete_branch(ns, root.flow_id, "ops", "oops")
    assert caught.value.reason == "NOT_A_BRANCH"
    assert not (await store.get_flow(ns, root.flow_id)).deleted
    await append(store, ns, root.flow_id, 1, ev())
    with pytest.raises(NotFound):
        await store.delete_branch(ns, str(uuid.uuid4()))
