"""Lifecycle hooks: called once per recorded event, in order, by the process that recorded it;
a failing hook is logged and changes nothing."""

from __future__ import annotations

import pytest

from engine_service.definitions.samples import chem_flow
from engine_service.run.engine import Engine
from engine_service.run.hooks import HookEvent, Hooks
from engine_service.steps.registry import StepRegistry
from flowledger_core.ports import EventStore


async def test_hooks_see_each_step_and_the_flow_end(
    store: EventStore, registry: StepRegistry, ns: str
) -> None:
    seen: list[str] = []

    async def on_complete(e: HookEvent) -> None:
        seen.append(f"complete:{getattr(e.event, 'step_id', '')}@{e.version}")

    hooks = Hooks(
        on_step_start=[lambda e: seen.append(f"start:{getattr(e.event, 'step_id', '')}")],
        on_step_complete=[on_complete],
        on_flow_complete=[lambda e: seen.append(f"flow:{e.flow_id}")],
    )
    run = await Engine(store, registry=registry, hooks=hooks).run(
        chem_flow(), {"order": 1}, namespace=ns
    )
    assert seen == [
        "start:seed", "complete:seed@3", "start:split", "complete:split@5",
        "start:print_and_count", "complete:print_and_count@7", f"flow:{run.flow_id}",
    ]  # fmt: skip
    # Attaching (a replay) calls nothing again.
    await Engine(store, registry=registry, hooks=hooks).attach(run.flow_id, namespace=ns)
    assert len(seen) == 7


async def test_a_failing_hook_is_logged_and_ignored(
    store: EventStore, registry: StepRegistry, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(e: HookEvent) -> None:
        raise RuntimeError("observer bug")

    hooks = Hooks(on_step_complete=[broken])
    run = await Engine(store, registry=registry, hooks=hooks).run(
        chem_flow(), {"order": 1}, namespace=ns
    )
    plain = await Engine(store, registry=registry).run(chem_flow(), {"order": 1}, namespace=ns)
    assert await run.flow_fingerprint() == await plain.flow_fingerprint()
    assert await run.event_variants() == "ISFSFSFC"
    assert "observer bug" in caplog.text
