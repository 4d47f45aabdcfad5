"""``run_to_end`` writes a step's StepFinished and the next step's StepStarted in one append: the
log (events, order, payloads, fingerprints) is the one ``next()`` writes, in fewer appends, and
a lost response or a crash around such an append recovers as before."""

from __future__ import annotations

from collections import Counter

import pytest

from engine_service.core.events import StepFinished
from engine_service.definitions.samples import chem_flow
from engine_service.run.engine import Engine
from engine_service.steps.registry import StepRegistry
from flowledger.errors import Unavailable
from flowledger_core.domain import Append, AppendResult
from flowledger_core.ports import EventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore
from tests.engine_service.run.test_engine import GOLDEN


def recording(store: EventStore, appends: list[tuple[str, str]]) -> DelegatingStore:
    async def record(cmd: Append, inner: AppendFn) -> AppendResult:
        appends.append(
            (cmd.command_id.split(":", 1)[1], "".join(e.type.variant for e in cmd.events))
        )
        return await inner(cmd)

    return DelegatingStore(store, record)


async def test_run_to_end_folds_step_started_into_the_previous_append(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    folded: list[tuple[str, str]] = []
    run = await Engine(recording(store, folded), registry=registry).run(chem_flow(), namespace=ns)
    assert folded == [
        ("g0:init", "I"),
        ("g0:s0:a1:started", "S"),
        ("g0:s0:a1:finished", "FS"),
        ("g0:s1:a1:finished", "FS"),
        ("g0:s2:a1:finished", "FC"),
    ]
    stepwise: list[tuple[str, str]] = []
    one_by_one = await Engine(recording(store, stepwise), registry=registry).start(
        chem_flow(), namespace=ns
    )
    while await one_by_one.next() is not None:
        pass
    assert [kinds for _, kinds in stepwise] == ["I", "S", "F", "S", "F", "S", "FC"]
    # The same log either way: the append boundaries are not part of it.
    assert [(e.version, e.event) for e in await run.events()] == [
        (e.version, e.event) for e in await one_by_one.events()
    ]
    assert await run.flow_fingerprint() == GOLDEN["chem"].flow
    assert await one_by_one.flow_fingerprint() == GOLDEN["chem"].flow


async def test_next_can_fold_too(store: EventStore, registry: StepRegistry, ns: str) -> None:
    run = await Engine(store, registry=registry).start(chem_flow(), namespace=ns)
    step = await run.next(start_next=True)
    assert step is not None
    assert step.step_id == "seed"
    assert await run.event_variants() == "ISFS"
    # Leaving it there is a crash after StepStarted: any engine runs the started step.
    fresh = await Engine(store, registry=registry).attach(run.flow_id, namespace=ns)
    assert (await fresh.run_to_end()).flow_fingerprint == GOLDEN["chem"].flow
    assert await fresh.event_variants() == "ISFSFSFC"


@pytest.mark.parametrize("lost", ["g0:s0:a1:finished", "g0:s1:a1:finished"])
async def test_a_lost_response_to_a_folded_append(
    store: EventStore, registry: StepRegistry, ns: str, lost: str
) -> None:
    dropped: list[str] = []

    async def lose_once(cmd: Append, inner: AppendFn) -> AppendResult:
        result = await inner(cmd)
        if cmd.command_id.endswith(lost) and not dropped:
            dropped.append(cmd.command_id)
            raise Unavailable("connection reset after the commit")
        return result

    run = await Engine(DelegatingStore(store, lose_once), registry=registry).start(
        chem_flow(), namespace=ns
    )
    with pytest.raises(Unavailable):
        await run.run_to_end()
    final = await run.run_to_end()
    assert final.flow_fingerprint == GOLDEN["chem"].flow
    assert await run.event_variants() == "ISFSFSFC"
    finished = Counter(
        e.event.step_id for e in await run.events() if isinstance(e.event, StepFinished)
    )
    assert finished == Counter(seed=1, split=1, print_and_count=1)
