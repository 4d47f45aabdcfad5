"""A small blocking facade over the async engine, for scripts and notebooks::

    with SyncEngine(MemoryEventStore(), registry=sample_registry()) as engine:
        run = engine.start(chem_flow())
        run.run_to_end()
        print(run.event_variants(), run.flow_fingerprint())

It owns one event loop (``asyncio.Runner``) and runs every call on it; do not use it from
inside a running event loop (use :class:`engine_service.run.engine.Engine` there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType

from engine_service.core.replay import FlowState, StepState
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import DEFAULT_NAMESPACE, Engine
from engine_service.run.flow_host import EngineSettings
from engine_service.run.flow_log import LoggedEvent
from engine_service.run.flow_run import FlowRun
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import JsonValue
from flowledger_core.ports import EventStore


class SyncFlowRun:
    def __init__(self, runner: asyncio.Runner, run: FlowRun) -> None:
        self._runner = runner
        self.run = run
        self.flow_id = run.flow_id
        self.namespace = run.namespace

    def next(self) -> StepState | None:
        return self._runner.run(self.run.next())

    def run_to_end(self) -> FlowState:
        return self._runner.run(self.run.run_to_end())

    def state(self) -> FlowState:
        return self._runner.run(self.run.state())

    def events(self) -> list[LoggedEvent]:
        return self._runner.run(self.run.events())

    def event_variants(self) -> str:
        return self._runner.run(self.run.event_variants())

    def flow_fingerprint(self) -> str | None:
        return self._runner.run(self.run.flow_fingerprint())

    def last_step_output(self, step_id: str) -> list[JsonValue] | None:
        return self._runner.run(self.run.last_step_output(step_id))


class SyncEngine:
    """Closing it closes the store it was given."""

    def __init__(
        self,
        store: EventStore,
        *,
        registry: StepRegistry | None = None,
        settings: EngineSettings | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self.engine = Engine(store, registry=registry, settings=settings)

    def start(
        self,
        definition: FlowDefinition,
        input: JsonValue = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        idempotency_key: str | None = None,
        variables: Mapping[str, JsonValue] | None = None,
    ) -> SyncFlowRun:
        run = self._runner.run(
            self.engine.start(
                definition,
                input,
                namespace=namespace,
                idempotency_key=idempotency_key,
                variables=variables,
            )
        )
        return SyncFlowRun(self._runner, run)

    def attach(
        self,
        flow_id: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        definition: FlowDefinition | None = None,
    ) -> SyncFlowRun:
        run = self._runner.run(
            self.engine.attach(flow_id, namespace=namespace, definition=definition)
        )
        return SyncFlowRun(self._runner, run)

    def close(self) -> None:
        try:
            self._runner.run(self.engine.store.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
