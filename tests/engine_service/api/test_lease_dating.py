"""A claim the store answers late is not spent on arrival (issue 22, "claims abandoned right
after they were granted"): the replica dates its lease from what the store says is left, not
from when it asked, so a slow store (or an outage the store client waited out) costs no run and
no re-executed step. Real services on loopback, both backends; the store's answer is held back
by :class:`~tests.fixtures.gated_store.GatedStore` for longer than the whole lease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY

from flowledger.client import FlowledgerClient
from flowledger.types import Event, EventType, FlowStatus
from flowledger_core.ports import EventStore
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import BOUND_S, published, running_engine
from tests.fixtures.gated_store import GatedStore
from tests.fixtures.store_server import running_store, wait_until

# A heartbeat a fifth of the lease: four periods of slack before a busy machine could lose it.
LEASE_MS = 2000
HEARTBEAT_MS = 400


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_a_claim_answered_after_a_lease_period_keeps_its_run(
    store_backend: EventStore, ns: str, gate_dir: Path
) -> None:
    gated = GatedStore(store_backend)
    async with running_store(gated) as store, running_engine(
        store.server.address, lease_ms=LEASE_MS, heartbeat_ms=HEARTBEAT_MS,
        max_concurrent_flows=1,
    ) as engine, FlowledgerClient(engine.address) as client:  # fmt: skip
        await published(client, ns, "first", gate_steps.gated_document("l1"))
        await published(client, ns, "second", gate_steps.gated_document("l2"))
        first = await client.start_flow(ns, "first")
        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "l1")), "gate l1", BOUND_S)
        # The only slot is busy: the second flow is created unleased, for a claim to take.
        second = await client.start_flow(ns, "second")

        again = [
            _sample("flowledger_engine_step_reexecutions_total", {"step_type": t})
            for t in ("hello.greet", gate_steps.GATE_TYPE)
        ]
        held = gated.hold("claim_flows", before=True)  # a store slow to act on the next claim
        (gate_dir / "l1.open").touch()  # the slot frees; the next poll claims, and is held
        await asyncio.wait_for(held.reached.wait(), BOUND_S)
        asked = time.monotonic()
        # Longer than the whole lease: dated from when it asked, the claim would be spent.
        await asyncio.sleep(1.5 * LEASE_MS / 1000)
        lost_before = _sample("flowledger_engine_leases_lost_total")
        renewed_before = _sample("flowledger_engine_lease_renewals_total", {"outcome": "ok"})
        held.release.set()

        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "l2")), "gate l2", BOUND_S)
        assert time.monotonic() - asked > LEASE_MS / 1000
        # Two renewals of the late claim's lease, or its loss: whichever comes first.
        await wait_until(
            lambda: _sample("flowledger_engine_lease_renewals_total", {"outcome": "ok"})
            >= renewed_before + 2
            or _sample("flowledger_engine_leases_lost_total") > lost_before,
            "two renewals (or a loss)", BOUND_S,
        )
        assert _sample("flowledger_engine_leases_lost_total") == lost_before
        (gate_dir / "l2.open").touch()
        for flow in (first, second):
            view = await client.wait_for_flow(ns, flow.flow_id, within=BOUND_S)
            assert view.status is FlowStatus.COMPLETED
        # Nothing ran twice: one StepStarted per step of the late-claimed flow.
        events: list[Event] = []
        async for update in client.watch_flow(ns, second.flow_id):
            events.extend(update.events)
            if update.status.terminal:
                break
        started = [e.payload["step_id"] for e in events if e.type is EventType.STEP_STARTED]
        assert started == ["greet", "gate", "shout", "done"]
        # Claimed fresh (nobody held it before): not counted as a re-execution.
        assert again == [
            _sample("flowledger_engine_step_reexecutions_total", {"step_type": t})
            for t in ("hello.greet", gate_steps.GATE_TYPE)
        ]
