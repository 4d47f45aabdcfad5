"""``create_flow_with`` on both backends: a flow, its lease and its first append in one
transaction, all of it or nothing."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

import pytest

from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger_core.domain import Append, ClaimRequest, EventType, FlowStatus, NewFlow
from flowledger_core.ports import EventStore
from tests.store.helpers import append, artifact, ev, read_all

LEASE_MS = 60_000


def first_append(*, expected: int = 0, token: int = 0, command: str = "init") -> Append:
    """An initial append as a caller writes it: namespace and flow id left to the store."""
    return Append(
        "", "", expected, command,
        (ev(EventType.FLOW_INITIALIZED, n=1), ev(EventType.STEP_STARTED, n=2)),
        (artifact({"input": 1}, event_index=0, kind="flow_input"),),
        FlowStatus.RUNNING, token,
    )  # fmt: skip


async def test_creates_leases_and_appends_in_one_call(store: EventStore, ns: str) -> None:
    flow_id = str(uuid.uuid4())
    created = await store.create_flow_with(
        NewFlow(ns, "f", flow_id=flow_id), lease=("replica-a", LEASE_MS), initial=first_append()
    )
    assert not created.existed
    assert created.lease is not None
    assert created.initial is not None
    assert (created.initial.first_version, created.initial.last_version) == (1, 2)
    assert not created.initial.duplicate
    assert (created.flow.version, created.flow.status) == (2, FlowStatus.RUNNING)
    stored = await store.get_flow(ns, flow_id)
    assert (stored.version, stored.status) == (2, FlowStatus.RUNNING)
    events = await read_all(store, ns, flow_id)
    assert [(e.version, e.type, e.command_id) for e in events] == [
        (1, EventType.FLOW_INITIALIZED, "init"), (2, EventType.STEP_STARTED, "init"),
    ]  # fmt: skip
    assert [e.seq for e in events] == list(created.initial.seqs)
    found = await store.get_artifacts(ns, [artifact({"input": 1}).hash])
    assert [a.produced_in_seq for a in found.found] == [events[0].seq]
    # The append went under the new lease: the holder goes on, another token cannot.
    token = created.lease.fencing_token
    await store.append(Append(ns, flow_id, 2, "next", (ev(),), fencing_token=token))
    with pytest.raises(FailedPrecondition) as err:
        await store.append(Append(ns, flow_id, 3, "stale", (ev(),), fencing_token=token + 1))
    assert err.value.reason == "LEASE_LOST"
    # A repeated command id is a duplicate, as for any append.
    again = await append(store, ns, flow_id, 3, ev(), cmd="init")
    assert again.duplicate
    assert (again.first_version, again.last_version) == (1, 2)


async def test_without_a_lease_the_append_is_unfenced(store: EventStore, ns: str) -> None:
    created = await store.create_flow_with(NewFlow(ns, "f"), initial=first_append())
    assert created.lease is None
    assert created.initial is not None
    assert created.initial.last_version == 2
    claimed = await store.claim_flows(ClaimRequest("a", 10, LEASE_MS, (ns,)))
    assert [lease.flow.flow_id for lease in claimed] == [created.flow.flow_id]


async def test_an_existing_flow_gets_no_lease_and_no_append(store: EventStore, ns: str) -> None:
    new = NewFlow(ns, "f", flow_id=str(uuid.uuid4()))
    first = await store.create_flow_with(new, lease=("a", LEASE_MS), initial=first_append())
    assert first.lease is not None
    again = await store.create_flow_with(new, lease=("b", LEASE_MS), initial=first_append())
    assert again.existed
    assert (again.lease, again.initial) == (None, None)
    assert again.flow.version == 2
    assert len(await read_all(store, ns, first.flow.flow_id)) == 2


@pytest.mark.parametrize(
    ("initial", "field"),
    [
        (first_append(expected=1), "initial_append.expected_version"),
        (first_append(token=7), "initial_append.fencing_token"),
        (first_append(command=""), "initial_append.command_id"),
        (
            replace(first_append(), new_status=FlowStatus.WAITING, task_queue=""),
            "initial_append.task_queue",
        ),
        (
            replace(first_append(), new_status=FlowStatus.WAITING, wake_at=datetime(2001, 1, 1)),
            "initial_append.wake_at",
        ),
    ],
)
async def test_a_bad_initial_append_creates_nothing(
    store: EventStore, ns: str, initial: Append, field: str
) -> None:
    flow_id = str(uuid.uuid4())
    with pytest.raises(InvalidArgument) as err:
        await store.create_flow_with(
            NewFlow(ns, "f", flow_id=flow_id), lease=("a", LEASE_MS), initial=initial
        )
    assert [v.field for v in err.value.violations] == [field]
    with pytest.raises(NotFound):
        await store.get_flow(ns, flow_id)


async def test_a_wrong_artifact_hash_creates_nothing(store: EventStore, ns: str) -> None:
    flow_id = str(uuid.uuid4())
    good = first_append()
    forged = replace(good, artifacts=(replace(good.artifacts[0], hash="0" * 64),))
    with pytest.raises(InvalidArgument) as err:
        await store.create_flow_with(NewFlow(ns, "f", flow_id=flow_id), initial=forged)
    assert [v.field for v in err.value.violations] == ["initial_append.artifacts[0].hash"]
    with pytest.raises(NotFound):
        await store.get_flow(ns, flow_id)
