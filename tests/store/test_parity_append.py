"""Appending: versions, round trips, idempotency, conflicts, preconditions, artifacts."""

from __future__ import annotations

import uuid

import pytest

from flowledger.canonical import content_hash, parse_json
from flowledger.errors import FailedPrecondition, InvalidArgument, VersionConflict
from flowledger_core.domain import (
    Append,
    EventType,
    FlowStatus,
    NewArtifact,
    NewBranch,
    NewEvent,
)
from flowledger_core.ports import EventStore
from tests.store.helpers import (
    append,
    artifact,
    assert_contiguous,
    ev,
    new_flow,
    read_all,
)

# Payloads whose text jsonb rewrites (spacing, key order, escapes, number forms): only the parsed
# values must round-trip.
_AWKWARD = '{"z": 1, "a": [true, false, null], "s": "caf\\u00e9 \\"q\\"", "n": 1.5e3, "e": {}}'


@pytest.mark.parametrize("type_", list(EventType), ids=lambda t: t.value)
async def test_every_event_type_round_trips(store: EventStore, ns: str, type_: EventType) -> None:
    flow = await new_flow(store, ns)
    payload = f'{{"kind": "{type_.value}", "variant": "{type_.variant}", "nested": {_AWKWARD}}}'
    result = await store.append(Append(ns, flow.flow_id, 0, "c1", (NewEvent(type_, payload),)))
    assert (result.first_version, result.last_version, result.duplicate) == (1, 1, False)
    [event] = await read_all(store, ns, flow.flow_id)
    assert event.type is type_
    assert event.type.variant == type_.variant
    assert parse_json(event.payload_json) == parse_json(payload)
    assert (event.seq, event.flow_id, event.version, event.command_id) == (
        result.seqs[0],
        flow.flow_id,
        1,
        "c1",
    )
    assert event.ts.tzinfo is not None


async def test_versions_are_gapless_and_seqs_grow(store: EventStore, ns: str) -> None:
    a = await new_flow(store, ns, name="a")
    b = await new_flow(store, ns, name="b")
    r1 = await append(store, ns, a.flow_id, 0, ev(), ev(), ev())
    r2 = await append(store, ns, b.flow_id, 0, ev())
    r3 = await append(store, ns, a.flow_id, 3, ev(), ev())
    assert (r1.first_version, r1.last_version) == (1, 3)
    assert (r2.first_version, r2.last_version) == (1, 1)
    assert (r3.first_version, r3.last_version) == (4, 5)
    seqs = list(r1.seqs) + list(r2.seqs) + list(r3.seqs)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 6
    events = await read_all(store, ns, a.flow_id)
    assert_contiguous(events)
    assert [e.seq for e in events] == list(r1.seqs + r3.seqs)
    assert (await store.get_flow(ns, a.flow_id)).version == 5


async def test_read_window_and_chunks(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, *[ev(n=i) for i in range(1, 11)])
    chunks = [list(c) async for c in store.read_events(ns, flow.flow_id, 2, 9, 3)]
    assert [[e.version for e in c] for c in chunks] == [[3, 4, 5], [6, 7, 8], [9]]
    assert [
        parse_json(e.payload_json)["n"] for e in await read_all(store, ns, flow.flow_id, 8)
    ] == [9, 10]
    assert await read_all(store, ns, flow.flow_id, 10) == []


async def test_new_status_is_applied_with_the_events(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(), status=FlowStatus.RUNNING)
    assert (await store.get_flow(ns, flow.flow_id)).status is FlowStatus.RUNNING
    await append(store, ns, flow.flow_id, 1, ev())
    assert (await store.get_flow(ns, flow.flow_id)).status is FlowStatus.RUNNING
    with pytest.raises(VersionConflict):
        await append(store, ns, flow.flow_id, 0, ev(), status=FlowStatus.FAILED)
    assert (await store.get_flow(ns, flow.flow_id)).status is FlowStatus.RUNNING


async def test_repeated_command_returns_the_first_result(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    first = await append(store, ns, flow.flow_id, 0, ev(), ev(), cmd="once")
    art = artifact({"late": True})
    # The repeat carries a stale version, other events and an artifact: none of it is written.
    again = await append(
        store, ns, flow.flow_id, 0, ev(), artifacts=[art], cmd="once", status=FlowStatus.FAILED
    )
    assert again.duplicate
    assert not first.duplicate
    assert (again.first_version, again.last_version, again.seqs) == (
        first.first_version,
        first.last_version,
        first.seqs,
    )
    assert len(await read_all(store, ns, flow.flow_id)) == 2
    after = await store.get_flow(ns, flow.flow_id)
    assert (after.version, after.status) == (2, FlowStatus.QUEUED)
    assert (await store.get_artifacts(ns, [art.hash])).missing == (art.hash,)
    # Command ids are per flow: the same id on another flow is a new command.
    other = await new_flow(store, ns)
    assert not (await append(store, ns, other.flow_id, 0, ev(), cmd="once")).duplicate


async def test_stale_version_is_a_conflict(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(), ev())
    for stale in (0, 1, 3):
        with pytest.raises(VersionConflict) as err:
            await append(store, ns, flow.flow_id, stale, ev())
        assert (err.value.flow_id, err.value.expected_version, err.value.current_version) == (
            flow.flow_id,
            stale,
            2,
        )
        assert err.value.reason == "VERSION_CONFLICT"
    assert len(await read_all(store, ns, flow.flow_id)) == 2


async def test_stale_fencing_token_is_refused(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    assert flow.lease_token == 0
    with pytest.raises(FailedPrecondition):
        await store.append(Append(ns, flow.flow_id, 0, "c1", (ev(),), fencing_token=7))
    assert await read_all(store, ns, flow.flow_id) == []
    ok = await store.append(Append(ns, flow.flow_id, 0, "c2", (ev(),), fencing_token=0))
    assert ok.last_version == 1


async def test_deleted_flow_refuses_appends(store: EventStore, ns: str) -> None:
    parent = await new_flow(store, ns)
    branch, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 0, "b"))
    await store.delete_branch(ns, branch.flow_id)
    with pytest.raises(FailedPrecondition):
        await append(store, ns, branch.flow_id, 0, ev())
    deleted = await store.get_flow(ns, branch.flow_id, include_deleted=True)
    assert deleted.version == 0


async def test_artifacts_are_stored_and_point_at_their_event(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    a1, a2 = artifact({"x": 1}, event_index=1), artifact([1, "two"], event_index=2, kind="list")
    meta = NewArtifact(content_hash({"m": 1}), "meta", '{"m": 1}', '{"source": "test"}', 0)
    result = await append(store, ns, flow.flow_id, 0, ev(), ev(), ev(), artifacts=[a1, a2, meta])
    missing = content_hash("never stored")
    lookup = await store.get_artifacts(ns, [a1.hash, missing, a2.hash, meta.hash])
    by_hash = {a.hash: a for a in lookup.found}
    assert set(by_hash) == {a1.hash, a2.hash, meta.hash}
    assert lookup.missing == (missing,)
    assert by_hash[a1.hash].produced_in_seq == result.seqs[1]
    assert by_hash[a2.hash].produced_in_seq == result.seqs[2]
    assert (by_hash[a2.hash].kind, parse_json(by_hash[a2.hash].payload_json)) == (
        "list",
        [1, "two"],
    )
    assert by_hash[a1.hash].metadata_json is None
    assert parse_json(by_hash[meta.hash].metadata_json or "null") == {"source": "test"}


async def test_artifacts_dedup_first_writer_keeps_it(store: EventStore, ns: str) -> None:
    a = await new_flow(store, ns)
    b = await new_flow(store, ns)
    art = artifact({"shared": 1})
    first = await append(store, ns, a.flow_id, 0, ev(), artifacts=[art])
    second = await append(store, ns, b.flow_id, 0, ev(), artifacts=[art, art])
    assert not second.duplicate
    [stored] = (await store.get_artifacts(ns, [art.hash])).found
    assert stored.produced_in_seq == first.seqs[0]


async def test_bad_artifact_hash_writes_nothing(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    good = artifact({"ok": 1})
    bad = NewArtifact(content_hash({"other": 1}), "json", '{"ok": 2}', None, 0)
    with pytest.raises(InvalidArgument) as err:
        await append(store, ns, flow.flow_id, 0, ev(), artifacts=[good, bad], cmd="c1")
    assert [v.field for v in err.value.violations] == ["artifacts[1].hash"]
    assert await read_all(store, ns, flow.flow_id) == []
    assert (await store.get_artifacts(ns, [good.hash, bad.hash])).found == ()
    # The refused command id was not consumed.
    assert not (await append(store, ns, flow.flow_id, 0, ev(), cmd="c1")).duplicate


async def test_version_conflict_writes_no_artifact(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev())
    art = artifact({"orphan": str(uuid.uuid4())})
    with pytest.raises(VersionConflict):
        await append(store, ns, flow.flow_id, 0, ev(), artifacts=[art])
    assert (await store.get_artifacts(ns, [art.hash])).found == ()
    assert [e.version for e in await read_all(store, ns, flow.flow_id)] == [1]
    assert (await store.count_steps(ns, flow.flow_id)).events == 1


async def test_malformed_event_payload_is_invalid(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    with pytest.raises(InvalidArgument):
        await store.append(
            Append(ns, flow.flow_id, 0, "c1", (ev(), NewEvent(EventType.STEP_STARTED, "{nope")))
        )
    assert await read_all(store, ns, flow.flow_id) == []


async def test_count_steps(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(
        store,
        ns,
        flow.flow_id,
        0,
        ev(EventType.FLOW_INITIALIZED),
        ev(EventType.STEP_STARTED),
        ev(EventType.STEP_FINISHED),
        ev(EventType.STEP_STARTED),
        ev(EventType.STEP_FAILED),
        ev(EventType.STEP_FINISHED),
        ev(EventType.STEP_ATTEMPT_FAILED),
    )
    counts = await store.count_steps(ns, flow.flow_id)
    assert (counts.events, counts.steps_finished, counts.steps_failed) == (7, 2, 1)
