"""The seed ``flow`` crate's simple_usage, through the store port, in this process.

    .venv/bin/python examples/branching.py

Create a flow and add steps (events), branch it, branch the branch, delete a branch (recorded,
never erased), and prune the main flow after a cursor (a new generation; the cut events stay
in the store). Runs over the in-memory store; ``PostgresEventStore.open(url)`` is the same port.
"""

from __future__ import annotations

import asyncio
import json

from flowledger_core.domain import Append, EventType, NewBranch, NewEvent, NewFlow, Prune
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore

NS = "examples"


async def add_step(store: EventStore, flow_id: str, step_id: str) -> int:
    """Append StepStarted + StepFinished for ``step_id``; returns the flow's new version."""
    flow = await store.get_flow(NS, flow_id)
    payload = json.dumps({"step_id": step_id})
    result = await store.append(Append(
        namespace=NS,
        flow_id=flow_id,
        expected_version=flow.version,
        command_id=f"{flow_id}-{step_id}",
        events=(
            NewEvent(EventType.STEP_STARTED, payload),
            NewEvent(EventType.STEP_FINISHED, payload),
        ),
    ))
    return result.last_version


async def variants(store: EventStore, flow_id: str) -> str:
    letters = []
    async for chunk in store.read_events(NS, flow_id):
        letters += [e.type.variant for e in chunk]
    return "".join(letters)


async def main() -> None:
    store = MemoryEventStore()
    try:
        flow, _ = await store.create_flow(NewFlow(NS, "simple_usage"))
        main_id = flow.flow_id
        init = json.dumps({"definition_hash": "example"})
        await store.append(Append(NS, main_id, 0, f"{main_id}-init",
                                  (NewEvent(EventType.FLOW_INITIALIZED, init),)))
        await add_step(store, main_id, "step1")
        cursor = await add_step(store, main_id, "step2")
        await add_step(store, main_id, "step3")
        print(f"main flow {main_id}: {await variants(store, main_id)}")

        branch, _ = await store.create_branch(NewBranch(NS, main_id, cursor, "experiment"))
        await add_step(store, branch.flow_id, "step3b")
        print(f"branch at v{cursor} {branch.flow_id}: {await variants(store, branch.flow_id)}")

        sub, _ = await store.create_branch(
            NewBranch(NS, branch.flow_id, cursor + 2, "experiment-sub")
        )
        await add_step(store, sub.flow_id, "step4")
        print(f"sub-branch {sub.flow_id}: {await variants(store, sub.flow_id)}")

        deleted = await store.delete_branch(NS, branch.flow_id, reason="experiment done")
        print(f"deleted branch {deleted.flow_id}: deleted={deleted.deleted}")

        current = await store.get_flow(NS, main_id)
        pruned, _ = await store.prune(Prune(NS, main_id, cursor, current.version, f"{main_id}-p"))
        print(
            f"main flow pruned after v{cursor}: {await variants(store, main_id)} "
            f"(generation {pruned.generation})"
        )
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
