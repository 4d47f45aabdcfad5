"""Branches (copy-on-write), deletion, prunes and snapshots."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from flowledger.canonical import parse_json
from flowledger.errors import InvalidArgument, NotFound, VersionConflict
from flowledger_core.domain import FlowFilter, NewBranch, Page, Prune, StoredEvent
from flowledger_core.ports import EventStore
from tests.store.helpers import append, assert_contiguous, ev, new_flow, read_all


def numbers(events: Sequence[StoredEvent]) -> list[tuple[int, int]]:
    """(version, payload n) pairs: tells which flow/append wrote each event."""
    return [(e.version, parse_json(e.payload_json)["n"]) for e in events]


async def test_branch_reads_the_parent_prefix_then_its_own(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, *[ev(n=i) for i in range(1, 6)])
    branch, existed = await store.create_branch(
        NewBranch(ns, parent.flow_id, 3, "b", metadata_json='{"why": "retry"}', created_by="bob")
    )
    assert not existed
    assert (branch.parent_flow_id, branch.fork_version, branch.version, branch.generation) == (
        parent.flow_id,
        3,
        3,
        0,
    )
    # The parent moves on; the branch still sees only 1..3 of it.
    await append(store, ns, parent.flow_id, 5, ev(n=6))
    r = await append(store, ns, branch.flow_id, 3, ev(n=104), ev(n=105))
    assert (r.first_version, r.last_version) == (4, 5)
    events = await read_all(store, ns, branch.flow_id)
    assert_contiguous(events)
    assert numbers(events) == [(1, 1), (2, 2), (3, 3), (4, 104), (5, 105)]
    assert [e.flow_id for e in events] == [parent.flow_id] * 3 + [branch.flow_id] * 2
    assert numbers(await read_all(store, ns, branch.flow_id, after=2, to=4)) == [(3, 3), (4, 104)]
    assert numbers(await read_all(store, ns, parent.flow_id))[-1] == (6, 6)
    counts = await store.count_steps(ns, branch.flow_id)
    assert counts.events == 5
    with pytest.raises(VersionConflict):
        await append(store, ns, branch.flow_id, 3, ev(n=0))


async def test_branch_is_idempotent_with_a_client_id(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, ev(n=1))
    fid = "0b7d1a54-5d6f-4a57-9d8e-5f2f7c3e2a11"
    first, existed = await store.create_branch(NewBranch(ns, parent.flow_id, 1, "b", fid))
    assert (first.flow_id, existed) == (fid, False)
    again, existed = await store.create_branch(NewBranch(ns, parent.flow_id, 1, "b", fid))
    assert existed
    assert again.flow_id == fid
    assert again.created_at == first.created_at


async def test_branch_ids_in_upper_case_are_canonicalised(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, ev(n=1))
    fid = "0b7d1a54-5d6f-4a57-9d8e-5f2f7c3e2a12"
    branch, existed = await store.create_branch(
        NewBranch(ns, parent.flow_id.upper(), 1, "b", fid.upper())
    )
    assert (branch.flow_id, branch.parent_flow_id, existed) == (fid, parent.flow_id, False)


async def test_fork_version_past_the_parent_is_invalid(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, ev(n=1), ev(n=2))
    with pytest.raises(InvalidArgument) as err:
        await store.create_branch(NewBranch(ns, parent.flow_id, 3, "b"))
    assert [v.field for v in err.value.violations] == ["fork_version"]
    assert (
        await store.list_flows(FlowFilter(ns, parent_flow_id=parent.flow_id), Page())
    ).flows == ()


async def test_branch_at_zero_and_at_the_head(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, ev(n=1), ev(n=2))
    empty, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 0, "empty"))
    head, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 2, "head"))
    assert await read_all(store, ns, empty.flow_id) == []
    assert numbers(await read_all(store, ns, head.flow_id)) == [(1, 1), (2, 2)]
    await append(store, ns, empty.flow_id, 0, ev(n=9))
    assert numbers(await read_all(store, ns, empty.flow_id)) == [(1, 9)]


async def test_branch_of_a_branch_reads_right(store: EventStore, ns: str) -> None:
    root = await new_flow(store, ns)
    await append(store, ns, root.flow_id, 0, *[ev(n=i) for i in range(1, 5)])
    b1, _ = await store.create_branch(NewBranch(ns, root.flow_id, 2, "b1"))
    await append(store, ns, b1.flow_id, 2, ev(n=13), ev(n=14), ev(n=15))
    b2, _ = await store.create_branch(NewBranch(ns, b1.flow_id, 4, "b2"))
    await append(store, ns, b2.flow_id, 4, ev(n=25))
    await append(store, ns, b1.flow_id, 5, ev(n=16))
    await append(store, ns, root.flow_id, 4, ev(n=5))
    assert numbers(await read_all(store, ns, b2.flow_id)) == [
        (1, 1),
        (2, 2),
        (3, 13),
        (4, 14),
        (5, 25),
    ]
    assert numbers(await read_all(store, ns, b1.flow_id)) == [
        (1, 1),
        (2, 2),
        (3, 13),
        (4, 14),
        (5, 15),
        (6, 16),
    ]
    assert numbers(await read_all(store, ns, b2.flow_id, after=1, to=3)) == [(2, 2), (3, 13)]
    assert (await store.get_flow(ns, b2.flow_id)).parent_flow_id == b1.flow_id


async def test_delete_branch(store: EventStore, ns: str) -> None:
    root = await new_flow(store, ns)
    await append(store, ns, root.flow_id, 0, ev(n=1), ev(n=2))
    b1, _ = await store.create_branch(NewBranch(ns, root.flow_id, 2, "b1"))
    await append(store, ns, b1.flow_id, 2, ev(n=13))
    b2, _ = await store.create_branch(NewBranch(ns, b1.flow_id, 3, "b2"))
    deleted = await store.delete_branch(ns, b1.flow_id, deleted_by="ops", reason="abandoned")
    assert deleted.deleted
    assert deleted.flow_id == b1.flow_id
    again = await store.delete_branch(ns, b1.flow_id, deleted_by="ops", reason="again")
    assert again.deleted
    assert again.version == deleted.version
    with pytest.raises(NotFound):
        await store.get_flow(ns, b1.flow_id)
    kept = await store.get_flow(ns, b1.flow_id, include_deleted=True)
    assert (kept.deleted, kept.version) == (True, 3)
    listed = await store.list_flows(FlowFilter(ns), Page())
    assert b1.flow_id not in {f.flow_id for f in listed.flows}
    listed = await store.list_flows(FlowFilter(ns, include_deleted=True), Page())
    assert b1.flow_id in {f.flow_id for f in listed.flows}
    # The sub-branch keeps reading what it inherited from the deleted branch.
    assert numbers(await read_all(store, ns, b2.flow_id)) == [(1, 1), (2, 2), (3, 13)]
    await append(store, ns, b2.flow_id, 3, ev(n=24))
    assert numbers(await read_all(store, ns, b2.flow_id))[-1] == (4, 24)


async def test_prune_then_append(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, *[ev(n=i) for i in range(1, 6)])
    pruned, dup = await store.prune(Prune(ns, flow.flow_id, 2, 5, "p1", "ops", "bad tail"))
    assert not dup
    assert (pruned.version, pruned.generation) == (2, 1)
    assert numbers(await read_all(store, ns, flow.flow_id)) == [(1, 1), (2, 2)]
    assert (await store.count_steps(ns, flow.flow_id)).events == 2
    with pytest.raises(VersionConflict):
        await append(store, ns, flow.flow_id, 5, ev(n=0))
    r = await append(store, ns, flow.flow_id, 2, ev(n=33), ev(n=34))
    assert (r.first_version, r.last_version) == (3, 4)
    events = await read_all(store, ns, flow.flow_id)
    assert_contiguous(events)
    assert numbers(events) == [(1, 1), (2, 2), (3, 33), (4, 34)]
    # A repeated prune is answered from the first result, even though the flow moved on.
    again, dup = await store.prune(Prune(ns, flow.flow_id, 2, 5, "p1"))
    assert dup
    assert again.version == 4
    # A second prune opens another generation.
    twice, _ = await store.prune(Prune(ns, flow.flow_id, 3, 4, "p2"))
    assert (twice.version, twice.generation) == (3, 2)
    assert numbers(await read_all(store, ns, flow.flow_id)) == [(1, 1), (2, 2), (3, 33)]


async def test_prune_checks_its_arguments(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(n=1), ev(n=2))
    with pytest.raises(VersionConflict) as err:
        await store.prune(Prune(ns, flow.flow_id, 1, 1, "p1"))
    assert err.value.current_version == 2
    with pytest.raises(InvalidArgument):
        await store.prune(Prune(ns, flow.flow_id, 3, 2, "p2"))
    assert (await store.get_flow(ns, flow.flow_id)).generation == 0


async def test_branch_keeps_its_prefix_when_the_parent_is_pruned(
    store: EventStore, ns: str
) -> None:
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, *[ev(n=i) for i in range(1, 5)])
    branch, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 4, "b"))
    await store.prune(Prune(ns, parent.flow_id, 1, 4, "p1"))
    await append(store, ns, parent.flow_id, 1, ev(n=102))
    assert numbers(await read_all(store, ns, branch.flow_id)) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert numbers(await read_all(store, ns, parent.flow_id)) == [(1, 1), (2, 102)]
    late, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 2, "late"))
    assert numbers(await read_all(store, ns, late.flow_id)) == [(1, 1), (2, 102)]


async def test_snapshot_round_trip(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, *[ev(n=i) for i in range(1, 6)])
    assert await store.load_snapshot(ns, flow.flow_id) is None
    await store.save_snapshot(ns, flow.flow_id, 2, '{"state": 2}')
    await store.save_snapshot(ns, flow.flow_id, 4, '{"state": [4, {"deep": true}]}')
    await store.save_snapshot(ns, flow.flow_id, 4, '{"state": [4, {"deep": true}]}')
    latest = await store.load_snapshot(ns, flow.flow_id)
    assert latest is not None
    assert (latest.flow_id, latest.version) == (flow.flow_id, 4)
    assert parse_json(latest.state_json) == {"state": [4, {"deep": True}]}
    capped = await store.load_snapshot(ns, flow.flow_id, max_version=3)
    assert capped is not None
    assert capped.version == 2
    assert await store.load_snapshot(ns, flow.flow_id, max_version=1) is None
    with pytest.raises(InvalidArgument):
        await store.save_snapshot(ns, flow.flow_id, 6, "{}")


async def test_prune_invalidates_later_snapshots(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, *[ev(n=i) for i in range(1, 7)])
    for version in (2, 4, 6):
        await store.save_snapshot(ns, flow.flow_id, version, f'{{"at": {version}}}')
    await store.prune(Prune(ns, flow.flow_id, 3, 6, "p1"))
    kept = await store.load_snapshot(ns, flow.flow_id)
    assert kept is not None
    assert kept.version == 2
    # The log grows back past 4 and 6: the old snapshots there describe another history.
    await append(store, ns, flow.flow_id, 3, ev(n=14), ev(n=15), ev(n=16))
    kept = await store.load_snapshot(ns, flow.flow_id)
    assert kept is not None
    assert (kept.version, parse_json(kept.state_json)) == (2, {"at": 2})
    await store.save_snapshot(ns, flow.flow_id, 5, '{"at": "5 after prune"}')
    fresh = await store.load_snapshot(ns, flow.flow_id)
    assert fresh is not None
    assert parse_json(fresh.state_json) == {"at": "5 after prune"}
    capped = await store.load_snapshot(ns, flow.flow_id, max_version=4)
    assert capped is not None
    assert capped.version == 2
