"""The blocking facade, as a script would use it."""

from __future__ import annotations

from engine_service.definitions.samples import chem_flow, sample_registry
from engine_service.run.sync import SyncEngine
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.run.test_engine import GOLDEN


def test_sync_engine_runs_a_flow_to_its_golden_fingerprint() -> None:
    with SyncEngine(MemoryEventStore(), registry=sample_registry()) as engine:
        run = engine.start(chem_flow(), idempotency_key="script-1")
        first = run.next()
        assert first is not None
        assert first.step_id == "seed"
        state = run.run_to_end()
        assert state.completed
        assert run.event_variants() == "ISFSFSFC"
        assert run.flow_fingerprint() == GOLDEN["chem"].flow
        assert run.last_step_output("print_and_count") == [{"count": 4}]
        again = engine.attach(run.flow_id)
        assert again.state() == state
        assert len(again.events()) == 8
        assert engine.start(chem_flow(), idempotency_key="script-1").flow_id == run.flow_id
