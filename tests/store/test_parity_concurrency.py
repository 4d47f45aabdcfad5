"""Concurrent writers: one winner per version, gapless logs, artifact dedup races, volume."""

from __future__ import annotations

import asyncio

from flowledger.canonical import parse_json
from flowledger.errors import FlowledgerError, InvalidArgument, VersionConflict
from flowledger_core.domain import Append, AppendResult, EventType, NewEvent
from flowledger_core.ports import EventStore
from tests.store.helpers import append, artifact, assert_contiguous, ev, new_flow, read_all


async def test_same_expected_version_has_exactly_one_winner(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev(n=0))
    start = asyncio.Event()

    async def writer(i: int) -> AppendResult | VersionConflict:
        await start.wait()
        try:
            return await append(store, ns, flow.flow_id, 1, ev(n=i), ev(n=i), cmd=f"w{i}")
        except VersionConflict as err:
            return err

    tasks = [asyncio.create_task(writer(i)) for i in range(16)]
    start.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    wins = [o for o in outcomes if isinstance(o, AppendResult)]
    conflicts = [o for o in outcomes if isinstance(o, VersionConflict)]
    assert len(wins) == 1
    assert len(conflicts) == 15
    assert (wins[0].first_version, wins[0].last_version) == (2, 3)
    assert all(c.current_version == 3 and c.expected_version == 1 for c in conflicts)
    events = await read_all(store, ns, flow.flow_id)
    assert_contiguous(events)
    winner = outcomes.index(wins[0])
    assert [parse_json(e.payload_json)["n"] for e in events] == [0, winner, winner]


async def test_versions_stay_contiguous_under_contention(store: EventStore, ns: str) -> None:
    flows = [await new_flow(store, ns, name=f"f{i}") for i in range(3)]
    writers, rounds = 6, 8

    async def writer(flow_id: str, w: int) -> None:
        expected = 0
        for r in range(rounds):
            while True:
                try:
                    res = await append(
                        store, ns, flow_id, expected, ev(w=w, r=r), ev(w=w, r=r), cmd=f"w{w}-r{r}"
                    )
                    expected = res.last_version
                    break
                except VersionConflict as err:
                    expected = err.current_version

    await asyncio.wait_for(
        asyncio.gather(*(writer(f.flow_id, w) for f in flows for w in range(writers))), 120
    )
    for flow in flows:
        events = await read_all(store, ns, flow.flow_id)
        assert_contiguous(events)
        assert len(events) == writers * rounds * 2
        # Each command wrote its two events side by side, exactly once.
        pairs = [(events[i].command_id, events[i + 1].command_id) for i in range(0, len(events), 2)]
        assert all(a == b for a, b in pairs)
        assert sorted(a for a, _ in pairs) == sorted(
            f"w{w}-r{r}" for w in range(writers) for r in range(rounds)
        )
        assert (await store.get_flow(ns, flow.flow_id)).version == len(events)


async def test_artifact_dedup_race(store: EventStore, ns: str) -> None:
    flows = [await new_flow(store, ns, name=f"f{i}") for i in range(8)]
    art = artifact({"contended": ns})
    start = asyncio.Event()

    async def writer(flow_id: str) -> AppendResult:
        await start.wait()
        return await append(store, ns, flow_id, 0, ev(), artifacts=[art])

    tasks = [asyncio.create_task(writer(f.flow_id)) for f in flows]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert all(not r.duplicate for r in results)
    found = (await store.get_artifacts(ns, [art.hash])).found
    assert len(found) == 1
    assert found[0].produced_in_seq in {r.seqs[0] for r in results}
    for flow in flows:
        assert len(await read_all(store, ns, flow.flow_id)) == 1


async def _stress(store: EventStore, ns: str, with_artifacts: bool) -> None:
    flows, per_flow, batch = 10, 1000, 100
    ids = [(await new_flow(store, ns, name=f"s{i}")).flow_id for i in range(flows)]

    async def fill(f: int, flow_id: str) -> list[AppendResult]:
        out = []
        for b in range(per_flow // batch):
            kinds = (EventType.STEP_STARTED, EventType.STEP_FINISHED)
            events = tuple(ev(kinds[k % 2], f=f, i=b * batch + k) for k in range(batch))
            arts = (
                tuple(
                    artifact({"f": f, "i": b * batch + k, "ns": ns}, event_index=k)
                    for k in range(batch)
                )
                if with_artifacts
                else ()
            )
            out.append(await store.append(Append(ns, flow_id, b * batch, f"b{b}", events, arts)))
        return out

    results = await asyncio.wait_for(
        asyncio.gather(*(fill(f, fid) for f, fid in enumerate(ids))), 300
    )
    all_seqs = [s for per in results for r in per for s in r.seqs]
    assert len(all_seqs) == len(set(all_seqs)) == flows * per_flow
    for f, fid in enumerate(ids):
        events = await read_all(store, ns, fid, chunk=700)
        assert_contiguous(events)
        assert [parse_json(e.payload_json)["i"] for e in events] == list(range(per_flow))
        counts = await store.count_steps(ns, fid)
        assert (counts.events, counts.steps_finished, counts.steps_failed) == (
            per_flow,
            per_flow // 2,
            0,
        )
        if with_artifacts:
            hashes = [artifact({"f": f, "i": i, "ns": ns}).hash for i in range(per_flow)]
            found = (await store.get_artifacts(ns, hashes)).found
            assert {a.hash: a.produced_in_seq for a in found} == {
                h: e.seq for h, e in zip(hashes, events, strict=True)
            }


async def test_stress_10k_events(store: EventStore, ns: str) -> None:
    await _stress(store, ns, with_artifacts=False)


async def test_stress_10k_events_with_artifacts(store: EventStore, ns: str) -> None:
    await _stress(store, ns, with_artifacts=True)


async def test_failed_commands_in_a_crowd_write_nothing(store: EventStore, ns: str) -> None:
    """Concurrent appends (a group-committing backend batches them): the stale, the malformed
    and the unstorable ones write neither events nor artifacts; the others all land."""
    flows = [await new_flow(store, ns, name=f"f{i}") for i in range(12)]
    for f in flows:
        await append(store, ns, f.flow_id, 0, ev())
    start = asyncio.Event()
    kinds = ["ok", "stale", "nul"] * 4

    async def writer(i: int, flow_id: str) -> AppendResult | FlowledgerError:
        art = artifact({"crowd": ns, "i": i})
        events = [ev(i=i)]
        if kinds[i] == "nul":  # valid JSON that jsonb cannot store
            events.append(NewEvent(EventType.STEP_SIGNAL, '{"bad": "a\\u0000b"}'))
        expected = 0 if kinds[i] == "stale" else 1
        await start.wait()
        try:
            return await append(store, ns, flow_id, expected, *events, artifacts=[art])
        except FlowledgerError as err:
            return err

    tasks = [asyncio.create_task(writer(i, f.flow_id)) for i, f in enumerate(flows)]
    start.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for i, (flow, out) in enumerate(zip(flows, outcomes, strict=True)):
        art = artifact({"crowd": ns, "i": i})
        found = (await store.get_artifacts(ns, [art.hash])).found
        events = await read_all(store, ns, flow.flow_id)
        if kinds[i] == "ok":
            assert isinstance(out, AppendResult)
            assert [e.version for e in events] == [1, 2]
            assert [a.produced_in_seq for a in found] == [out.seqs[0]]
        else:
            expected_error = VersionConflict if kinds[i] == "stale" else InvalidArgument
            assert isinstance(out, expected_error), out
            assert [e.version for e in events] == [1]
            assert found == ()
