"""Flow operations as the engine API serves them: start, describe, list, artifacts.

Everything here works in domain values (no protobuf): :mod:`engine_service.api.engine_servicer`
validates and converts around it. Branch and verify wrap the engine core's own operations.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from engine_service import metrics
from engine_service.api.definitions import Definitions
from engine_service.core.replay import FlowState, replay_stored
from engine_service.run import interventions
from engine_service.run.branching import OVERRIDES_FIELD
from engine_service.run.engine import Engine
from engine_service.run.flow_run import FlowRun
from engine_service.run.verify import VerifyReport
from engine_service.work.loop import WorkLoop
from flowledger.canonical import JsonValue, parse_json
from flowledger.errors import FailedPrecondition, FieldViolation, InvalidArgument
from flowledger_core.domain import ArtifactLookup, Flow, FlowFilter, FlowPage, Page, StoredEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartRequest:
    namespace: str
    definition_name: str
    version: int
    # The input as validation parsed it from input_json (None when that was empty): parsed
    # once per request.
    input: JsonValue
    idempotency_key: str
    started_by: str


@dataclass(frozen=True)
class BranchRequest:
    namespace: str
    flow_id: str
    at_step: str
    # JSON object text by step id (validated before).
    params_json: Mapping[str, str]
    idempotency_key: str
    started_by: str


@dataclass(frozen=True)
class FlowView:
    """A flow's record and its replayed state, with the compact variants of its log."""

    flow: Flow
    state: FlowState
    variants: str


class Flows:
    def __init__(
        self,
        engine: Engine,
        definitions: Definitions,
        worker: WorkLoop | None,
        *,
        max_pending_signals: int = 1000,
    ) -> None:
        self._engine = engine
        self._store = engine.store
        self._definitions = definitions
        self._worker = worker
        self._max_pending_signals = max_pending_signals

    async def start(self, req: StartRequest) -> tuple[str, bool]:
        """Start a flow of a published version; (flow id, existed). The flow is initialized
        here and then run by the work loop, first of all this replica's."""
        _, definition = await self._definitions.startable(
            req.namespace, req.definition_name, req.version
        )
        try:
            definition.resolve(self._engine.registry)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"definition {req.definition_name!r} version {definition.version} uses step "
                f"types this engine does not have: {exc.message}",
                reason="STEP_TYPES_UNAVAILABLE",
                metadata={"name": req.definition_name, "version": str(definition.version)},
            ) from exc
        key = req.idempotency_key or None
        # With a free run slot here, the store leases the flow to this replica as it creates
        # it, and the run starts from the handle that created it: no claim, no re-read.
        with contextlib.ExitStack() as slot:
            lease = None if self._worker is None else slot.enter_context(self._worker.start_slot())
            sent = time.monotonic()
            try:
                run = await self._engine.start(
                    definition, req.input, namespace=req.namespace, idempotency_key=key,
                    created_by=req.started_by, lease=lease,
                )
            except InvalidArgument as exc:
                # The only request field the core still checks is the input (canonical JSON).
                raise _renamed(exc, "input", "input_json") from exc
            # Without a key the id is a fresh uuid4: "existed" can only mean that a retried
            # create found its own first attempt.
            existed = run.existed and key is not None
            if not existed:
                metrics.FLOWS_STARTED.labels("start").inc()
            if self._worker is not None and self._worker.adopt(run, sent):
                return run.flow_id, existed
        await self._run_here(run)
        return run.flow_id, existed

    async def branch(self, req: BranchRequest) -> tuple[str, bool]:
        """Branch an ended flow before ``at_step``; (branch flow id, existed). The branch then
        runs like a started flow."""
        overrides = {step: parse_json(text) for step, text in req.params_json.items()}
        try:
            run = await self._engine.branch(
                req.namespace, req.flow_id, req.at_step, overrides,
                idempotency_key=req.idempotency_key or None, started_by=req.started_by,
            )
        except InvalidArgument as exc:
            raise _renamed(exc, OVERRIDES_FIELD, "params_json") from exc
        existed = run.existed and bool(req.idempotency_key)
        if not existed:
            metrics.FLOWS_STARTED.labels("branch").inc()
        await self._run_here(run)
        return run.flow_id, existed

    async def signal(
        self,
        namespace: str,
        flow_id: str,
        name: str,
        payload: JsonValue,
        request_id: str,
        sent_by: str,
    ) -> interventions.SignalResult:
        """Record a signal; when a step waited for it, run the flow on this replica now."""
        run = await self._engine.attach(flow_id, namespace=namespace)
        result = await interventions.signal(
            run, name, payload, request_id=request_id, sent_by=sent_by,
            max_pending=self._max_pending_signals,
        )  # fmt: skip
        if result.resumed:
            await self._resume(run)
        return result

    async def cancel(
        self, namespace: str, flow_id: str, reason: str, cancelled_by: str
    ) -> interventions.CancelResult:
        """Record the cancel; the flow's compensations then run (here, if it is not running
        elsewhere: a running engine sees the cancel at its next append)."""
        run = await self._engine.attach(flow_id, namespace=namespace)
        result = await interventions.cancel(run, reason=reason, requested_by=cancelled_by)
        if not result.already:
            await self._resume(run)
        return result

    async def terminate(
        self, namespace: str, flow_id: str, reason: str, terminated_by: str
    ) -> interventions.CancelResult:
        """End the flow now, recorded (FlowCancelled with who and why): no compensation."""
        run = await self._engine.attach(flow_id, namespace=namespace)
        return await interventions.terminate(run, reason=reason, terminated_by=terminated_by)

    async def _resume(self, run: FlowRun) -> None:
        """Run the flow on here with the handle that wrote to it (saves reading it again)."""
        if self._worker is not None:
            await self._worker.run_now(run.namespace, run.flow_id, run)

    async def verify(self, namespace: str, flow_id: str) -> VerifyReport:
        return await self._engine.verify(namespace, flow_id)

    async def _run_here(self, run: FlowRun) -> None:
        """Claim the flow on this replica and run it in the background (saves waiting for a
        work-loop poll) with the handle that made it (saves re-reading it); when not claimed
        here, another replica's loop runs it."""
        state = run.current_state
        if self._worker is not None and not (state is not None and state.terminal):
            await self._worker.run_now(run.namespace, run.flow_id, run)

    async def describe(self, namespace: str, flow_id: str) -> FlowView:
        flow = await self._store.get_flow(namespace, flow_id)
        started = time.perf_counter()
        events = await self.events(namespace, flow_id)
        state = replay_stored(events)
        metrics.REPLAY_DURATION.observe(time.perf_counter() - started)
        return FlowView(flow, state, "".join(e.type.variant for e in events))

    async def events(self, namespace: str, flow_id: str) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        async for chunk in self._store.read_events(namespace, flow_id):
            out.extend(chunk)
        return out

    async def list(self, flt: FlowFilter, page: Page) -> FlowPage:
        return await self._store.list_flows(flt, page)

    async def fetch_artifacts(self, namespace: str, hashes: tuple[str, ...]) -> ArtifactLookup:
        return await self._store.get_artifacts(namespace, hashes)


def _renamed(exc: InvalidArgument, core_field: str, request_field: str) -> InvalidArgument:
    """The core's violation paths (``params_overrides.split.count``) as the request's fields
    (``params_json.split.count``)."""

    def rename(path: str) -> str:
        return request_field + path[len(core_field):] if path.startswith(core_field) else path

    violations = [FieldViolation(rename(v.field), v.description) for v in exc.violations]
    message = exc.message.replace(core_field, request_field)
    return InvalidArgument(message, reason=exc.reason, metadata=exc.metadata,
                           violations=violations)
