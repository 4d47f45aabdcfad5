"""Verifying a flow: replay its whole log, recompute every hash and fingerprint, report the first
divergence (or none).

What is recomputed, event by event, oldest first (the formulas of
docs/decisions/0003-fingerprints.md):

* every event must fit the state machine (else ``event_order``);
* FlowInitialized: ``definition_hash`` from the ordered step ids (``definition_hash``), and the
  flow input (and variables) artifacts;
* StepFinished: its ``input_hashes`` must be what the step received (the flow input, + variables,
  for the first step; the previous step's outputs otherwise; + the payload of the signal a
  ``signal`` step consumed), its fingerprint is recomputed from them and the step's *effective*
  params (branch overrides included) (``step_fingerprint``), then each of its output artifacts;

The inputs are computed by the very functions the run records them with
(:func:`~engine_service.core.step_inputs.finished_inputs_of`, ``fingerprint_inputs_of``), over the
same replayed state, so a step kind the run hashes differently cannot verify as diverged.
* FlowCompleted: the flow fingerprint over the step fingerprints (``flow_fingerprint``).

Each artifact is fetched once and its stored payload re-hashed (``missing_artifact`` when the
store lacks it, ``artifact_hash`` when the payload no longer hashes to its hash). Snapshots are
not used: the point is to trust nothing but the log and the artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine_service.core.event_codec import decode
from engine_service.core.events import (
    EngineEvent,
    FlowCompleted,
    FlowInitialized,
    StepFailed,
    StepFinished,
    StepSkipped,
)
from engine_service.core.replay import FlowState, apply
from engine_service.core.step_inputs import fingerprint_inputs_of, finished_inputs_of
from engine_service.fingerprint import (
    ENGINE_VERSION,
    definition_hash,
    failed_step_fingerprint,
    flow_fingerprint,
    skipped_step_fingerprint,
    step_fingerprint,
)
from engine_service.planning.artifacts import MAX_HASHES_PER_CALL
from flowledger.canonical import content_hash, parse_json
from flowledger.errors import FailedPrecondition, InternalError
from flowledger_core.domain import StoredEvent
from flowledger_core.ports import EventStore

DivergenceKind = Literal[
    "artifact_hash",
    "missing_artifact",
    "step_fingerprint",
    "flow_fingerprint",
    "definition_hash",
    "event_order",
]


@dataclass(frozen=True)
class Divergence:
    """Where the log and the recomputation first disagree. ``recorded`` is what the log (or,
    for an artifact, its hash) says; ``recomputed`` what verification found."""

    version: int
    step_id: str  # "" for flow-level events
    kind: DivergenceKind
    recorded: str
    recomputed: str
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    events_checked: int
    artifacts_checked: int
    divergence: Divergence | None = None


class _Diverged(Exception):
    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.detail)
        self.divergence = divergence


class _Verifier:
    def __init__(self, store: EventStore, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self.state = FlowState()
        self.events = 0
        # artifact hash -> the hash its stored payload has now (None: missing from the store)
        self.rehashed: dict[str, str | None] = {}

    async def chunk(self, chunk: Sequence[StoredEvent]) -> None:
        decoded: list[tuple[StoredEvent, EngineEvent | InternalError]] = []
        for stored in chunk:
            try:
                decoded.append((stored, decode(stored.type, stored.payload_json)))
            except InternalError as exc:
                decoded.append((stored, exc))
        await self._fetch(
            [h for _, e in decoded if not isinstance(e, InternalError) for h in _referenced(e)]
        )
        for stored, event in decoded:
            if isinstance(event, InternalError):
                self.events += 1
                raise _Diverged(
                    Divergence(
                        stored.version,
                        "",
                        "event_order",
                        stored.payload_json[:200],
                        "",
                        f"event {stored.version} ({stored.type.value}) does not decode: "
                        f"{event.message}",
                    )
                )
            self.event(stored.version, event)

    def event(self, version: int, event: EngineEvent) -> None:
        self.events += 1
        before = self.state
        try:
            self.state = apply(before, event, version)
        except InternalError as exc:
            raise _Diverged(
                Divergence(version, _step_of(event), "event_order", "", "", exc.message)
            ) from exc
        match event:
            case FlowInitialized():
                self._initialized(version, event)
            case StepFinished():
                self._finished(version, event, before)
            case StepFailed() if event.fingerprint is not None or _continues(before, event):
                self._failed_continued(version, event, before)
            case StepSkipped():
                self._skipped(version, event, before)
            case FlowCompleted():
                recomputed = flow_fingerprint(before.step_fingerprints)
                if recomputed != event.flow_fingerprint:
                    raise _Diverged(
                        Divergence(
                            version,
                            "",
                            "flow_fingerprint",
                            event.flow_fingerprint,
                            recomputed,
                            "FlowCompleted's fingerprint is not that of the step fingerprints",
                        )
                    )

    def _initialized(self, version: int, init: FlowInitialized) -> None:
        if init.engine_version != ENGINE_VERSION:
            raise FailedPrecondition(
                f"the flow ran under fingerprint scheme {init.engine_version!r}; this engine "
                f"verifies {ENGINE_VERSION!r}",
                reason="ENGINE_VERSION_MISMATCH",
                metadata={"engine_version": init.engine_version},
            )
        recomputed = definition_hash(init.step_ids)
        if recomputed != init.definition_hash:
            raise _Diverged(
                Divergence(
                    version,
                    "",
                    "definition_hash",
                    init.definition_hash,
                    recomputed,
                    "definition_hash is not the hash of the ordered step ids",
                )
            )
        self._artifact(version, "", init.input_hash, "the flow input")
        if init.variables_hash:
            self._artifact(version, "", init.variables_hash, "the flow variables")

    def _finished(self, version: int, event: StepFinished, before: FlowState) -> None:
        init = before.init
        assert init is not None  # apply() refuses a StepFinished before FlowInitialized
        received = finished_inputs_of(before, event.index)
        if tuple(event.input_hashes) != received:
            raise _Diverged(
                Divergence(
                    version,
                    event.step_id,
                    "step_fingerprint",
                    ",".join(event.input_hashes),
                    ",".join(received),
                    "input_hashes are not what the step received",
                )
            )
        recomputed = step_fingerprint(
            step_id=event.step_id,
            input_hashes=received,
            params=before.params_of(event.index),
            definition_hash=init.definition_hash,
            engine_version=ENGINE_VERSION,
        )
        if recomputed != event.fingerprint:
            raise _Diverged(
                Divergence(
                    version,
                    event.step_id,
                    "step_fingerprint",
                    event.fingerprint,
                    recomputed,
                    "the step fingerprint does not follow from its inputs and params",
                )
            )
        for position, output in enumerate(event.output_hashes):
            self._artifact(version, event.step_id, output, f"output_hashes[{position}]")

    def _failed_continued(self, version: int, event: StepFailed, before: FlowState) -> None:
        """A continue_on_error step's failure carries the fingerprint of it (decision 0010)."""
        init = before.init
        assert init is not None
        recomputed = failed_step_fingerprint(
            step_id=event.step_id,
            input_hashes=fingerprint_inputs_of(before, event.index),
            params=before.params_of(event.index),
            definition_hash=init.definition_hash,
            error_type=event.error_type,
        )
        if recomputed != event.fingerprint:
            raise _Diverged(
                Divergence(
                    version,
                    event.step_id,
                    "step_fingerprint",
                    event.fingerprint or "",
                    recomputed,
                    "the failed step's fingerprint does not follow from its inputs, params and "
                    "error type",
                )
            )

    def _skipped(self, version: int, event: StepSkipped, before: FlowState) -> None:
        """The skip's fingerprint (decision 0010); the condition itself is not re-evaluated."""
        init = before.init
        assert init is not None
        recomputed = skipped_step_fingerprint(
            step_id=event.step_id,
            input_hashes=fingerprint_inputs_of(before, event.index),
            params=before.params_of(event.index),
            definition_hash=init.definition_hash,
        )
        if recomputed != event.fingerprint:
            raise _Diverged(
                Divergence(
                    version,
                    event.step_id,
                    "step_fingerprint",
                    event.fingerprint,
                    recomputed,
                    "the skipped step's fingerprint does not follow from its inputs and params",
                )
            )

    def _artifact(self, version: int, step_id: str, artifact_hash: str, what: str) -> None:
        rehashed = self.rehashed[artifact_hash]
        if rehashed is None:
            raise _Diverged(
                Divergence(
                    version,
                    step_id,
                    "missing_artifact",
                    artifact_hash,
                    "",
                    f"{what}: artifact {artifact_hash} is missing from the store",
                )
            )
        if rehashed != artifact_hash:
            raise _Diverged(
                Divergence(
                    version,
                    step_id,
                    "artifact_hash",
                    artifact_hash,
                    rehashed,
                    f"{what}: the stored payload of artifact {artifact_hash} hashes differently",
                )
            )

    async def _fetch(self, hashes: Sequence[str]) -> None:
        wanted = sorted({h for h in hashes if h not in self.rehashed})
        for start in range(0, len(wanted), MAX_HASHES_PER_CALL):
            batch = wanted[start : start + MAX_HASHES_PER_CALL]
            lookup = await self._store.get_artifacts(self._namespace, batch)
            for artifact in lookup.found:
                self.rehashed[artifact.hash] = _rehash(artifact.payload_json)
            for missing in batch:
                self.rehashed.setdefault(missing, None)

    @property
    def artifacts_checked(self) -> int:
        return sum(1 for h in self.rehashed.values() if h is not None)


async def verify_flow(
    store: EventStore, namespace: str, flow_id: str, chunk_size: int = 1000
) -> VerifyReport:
    """Verify one flow (see the module docstring). NotFound when it does not exist;
    FailedPrecondition when it ran under another fingerprint scheme."""
    verifier = _Verifier(store, namespace)
    try:
        async for chunk in store.read_events(namespace, flow_id, chunk_size=chunk_size):
            await verifier.chunk(chunk)
    except _Diverged as diverged:
        return VerifyReport(False, verifier.events, verifier.artifacts_checked, diverged.divergence)
    return VerifyReport(True, verifier.events, verifier.artifacts_checked)


def _continues(before: FlowState, event: StepFailed) -> bool:
    init = before.init
    return init is not None and 0 <= event.index < len(init.steps) and (
        init.steps[event.index].continue_on_error
    )


def _referenced(event: EngineEvent) -> tuple[str, ...]:
    if isinstance(event, FlowInitialized):
        return (event.input_hash,) + ((event.variables_hash,) if event.variables_hash else ())
    if isinstance(event, StepFinished):
        return tuple(event.input_hashes) + tuple(event.output_hashes)
    return ()


def _rehash(payload_json: str) -> str:
    try:
        return content_hash(parse_json(payload_json))
    except Exception as exc:  # not JSON, or not canonicalizable: it cannot be the artifact
        return f"unhashable payload: {exc}"


def _step_of(event: EngineEvent) -> str:
    step_id = getattr(event, "step_id", "")
    return step_id if isinstance(step_id, str) else ""
