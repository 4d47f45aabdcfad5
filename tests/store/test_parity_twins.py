"""The twin test: one command script on memory and on a twin gives the same observable history.

The twins are the Postgres store and the engine's gRPC store client over Postgres.

Clock readings and seq numbers may differ (Postgres sequences skip values on rollback), and
jsonb normalises JSON text; everything else must be equal: flows, versions, event types and
variants, parsed payloads, counts, snapshots, artifacts (by the event that produced them) and the
namespace feed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from flowledger.canonical import parse_json
from flowledger.errors import FlowledgerError
from flowledger_core.domain import (
    Append,
    EventType,
    FlowFilter,
    FlowStatus,
    NewBranch,
    NewFlow,
    Page,
    Prune,
)
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.store.helpers import Feed, artifact, ev, flow_view, read_all, view

ROOT = str(uuid.UUID(int=1, version=4))
BRANCH = str(uuid.UUID(int=2, version=4))
SUB = str(uuid.UUID(int=3, version=4))
OTHER = str(uuid.UUID(int=4, version=4))
NS = "twins"


async def _script(store: EventStore) -> list[Any]:
    """Runs the commands; returns what each one answered (errors by class and reason)."""
    answers: list[Any] = []

    async def run(op: Any) -> None:
        try:
            answer = await op
        except FlowledgerError as err:
            answers.append((type(err).__name__, err.reason, [v.field for v in err.violations]))
            return
        if hasattr(answer, "fork_version"):
            answer = flow_view(answer)
        elif isinstance(answer, tuple) and answer and hasattr(answer[0], "fork_version"):
            answer = (flow_view(answer[0]), *answer[1:])
        elif hasattr(answer, "seqs"):
            answer = (answer.first_version, answer.last_version, len(answer.seqs), answer.duplicate)
        answers.append(answer)

    def app(flow: str, expected: int, cmd: str, *events: Any, **kw: Any) -> Any:
        return store.append(Append(NS, flow, expected, cmd, tuple(events), **kw))

    await run(store.create_flow(NewFlow(NS, "root", ROOT, '{"k": [1, 2]}', "me")))
    await run(store.create_flow(NewFlow(NS, "root", ROOT, '{"k": [1, 2]}', "me")))
    await run(store.create_flow(NewFlow(NS, "other", OTHER, status=FlowStatus.RUNNING)))
    await run(store.create_flow(NewFlow(NS, "clash", ROOT)))
    await run(
        app(
            ROOT,
            0,
            "c1",
            ev(EventType.FLOW_INITIALIZED, steps=["a", "b"]),
            new_status=FlowStatus.RUNNING,
        )
    )
    await run(
        app(
            ROOT,
            1,
            "c2",
            *(ev(t, i=i) for i, t in enumerate(EventType)),
            artifacts=(artifact({"out": 1}, 2), artifact({"out": 2}, 5)),
        )
    )
    await run(app(ROOT, 1, "c2", ev()))  # repeat
    await run(app(ROOT, 1, "c3", ev()))  # stale
    await run(
        app(
            OTHER,
            0,
            "c1",
            ev(EventType.STEP_FINISHED, x=None),
            artifacts=(artifact({"out": 1}, 0),),
        )
    )  # dedup: ROOT's stays
    await run(store.create_branch(NewBranch(NS, ROOT, 99, "bad")))
    await run(store.create_branch(NewBranch(NS, ROOT, 4, "branch", BRANCH)))
    await run(app(BRANCH, 4, "b1", ev(EventType.STEP_FAILED, why="boom")))
    await run(store.create_branch(NewBranch(NS, BRANCH, 5, "sub", SUB)))
    await run(app(SUB, 5, "s1", ev(EventType.STEP_SIGNAL, sig="go")))
    wake = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    await run(
        app(SUB, 6, "s2", ev(EventType.TASK_SCHEDULED), new_status=FlowStatus.WAITING,
            wake_at=wake, task_queue="q:1")
    )  # fmt: skip
    await run(app(SUB, 7, "s3", ev(), wake_at=wake))  # refused: no new_status
    await run(app(SUB, 7, "s3", ev(EventType.SIGNAL_RECEIVED)))  # keeps wake_at and task_queue
    await run(store.save_snapshot(NS, ROOT, 3, '{"snap": 3}'))
    await run(store.save_snapshot(NS, ROOT, 10, '{"snap": 10}'))
    await run(store.prune(Prune(NS, ROOT, 6, 8, "p1")))
    await run(store.prune(Prune(NS, ROOT, 5, len(EventType) + 1, "p2")))
    await run(
        app(ROOT, 5, "c4", ev(EventType.FLOW_COMPLETED, fp="abc"), new_status=FlowStatus.COMPLETED)
    )
    await run(store.delete_branch(NS, BRANCH, "me", "done"))
    await run(app(BRANCH, 5, "b2", ev()))
    await run(store.load_snapshot(NS, ROOT))
    return [parse_snapshot(a) for a in answers]


def parse_snapshot(answer: Any) -> Any:
    if hasattr(answer, "state_json"):
        return ("snapshot", answer.version, parse_json(answer.state_json))
    return answer


async def _observe(store: EventStore) -> dict[str, Any]:
    flows = await store.list_flows(FlowFilter(NS, include_deleted=True), Page())
    logs = {
        f.flow_id: view(await read_all(store, NS, f.flow_id)) for f in flows.flows if not f.deleted
    }
    counts = {
        f.flow_id: await store.count_steps(NS, f.flow_id) for f in flows.flows if not f.deleted
    }
    # The feed carries every committed event, pruned or on a deleted branch too: wait for a
    # sentinel written last rather than for a count.
    feed = Feed(store.subscribe(NS))
    try:
        sentinel = await store.append(Append(NS, OTHER, 1, "sentinel", (ev(),)))
        delivered = await feed.wait_for_seq(sentinel.seqs[0])
    finally:
        await feed.close()
    where = {f.event.seq: (f.event.flow_id, f.event.version) for f in delivered}
    hashes = [artifact({"out": 1}).hash, artifact({"out": 2}).hash]
    lookup = await store.get_artifacts(NS, hashes)
    artifacts = sorted(
        (a.hash, a.kind, parse_json(a.payload_json), where[a.produced_in_seq]) for a in lookup.found
    )
    return {
        "flows": [flow_view(f) for f in flows.flows],
        "logs": logs,
        "counts": counts,
        "artifacts": artifacts,
        "feed": [(f.event.flow_id, f.event.version, f.event.type) for f in delivered],
    }


@pytest.fixture(params=["postgres", "grpc"])
def twin(request: pytest.FixtureRequest) -> EventStore:
    """Postgres, then the gRPC store client over Postgres (``tests/store/conftest.py``)."""
    fixture = "grpc_client_store" if request.param == "grpc" else "postgres_store"
    store: EventStore = request.getfixturevalue(fixture)
    return store


async def test_memory_and_its_twin_tell_the_same_history(
    memory_store: MemoryEventStore, twin: EventStore
) -> None:
    memory_answers = await _script(memory_store)
    twin_answers = await _script(twin)
    assert twin_answers == memory_answers
    memory_seen = await _observe(memory_store)
    twin_seen = await _observe(twin)
    for key in memory_seen:
        assert twin_seen[key] == memory_seen[key], key
