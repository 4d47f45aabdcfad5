"""Errors a running flow can never get past, and the write that ends the flow on one.

A run that meets one of these would meet it again on every attempt, on every replica: looping on
it (re-claimed every lease period, the error logged each time) never ends the flow and leaves its
callers (a ``flowctl branch`` waiting for the branch) hanging. Instead the flow ends FAILED, once,
with the error as its reason:

* ``ArtifactCorrupt`` / ``ArtifactMissing``: an artifact the flow's log references no longer
  hashes to its hash, or is gone from the store (:mod:`engine_service.planning.artifacts`).
  Artifacts are content-addressed and shared: nothing a run can do brings the payload back.
* ``WriteRefused``: the store refused what the run planned to append as invalid
  (INVALID_ARGUMENT) or over a size limit (RESOURCE_EXHAUSTED; the events-per-flow limit has its
  own ending, :func:`engine_service.core.writes.out_of_room`). The same step gives the same write.

The ending write is the current step's StepFailed (when it had started) and FlowFailed, both
with that error type; no retry, no ``continue_on_error``, and no compensation runs (they would
read the same data). Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, a lost lease)
are not permanent: the run stops and the flow is taken up again. Errors that depend on the
replica (step types it lacks, another fingerprint scheme) or a log that does not replay are not
the flow's to end either: another replica, or a repaired log, may run it.
"""

from __future__ import annotations

from engine_service.core.events import EngineEvent, FlowFailed, StepFailed
from engine_service.core.ids import command_id
from engine_service.core.replay import FlowState, StepStatus
from engine_service.core.step_inputs import fingerprint_inputs_of
from engine_service.core.writes import EVENTS_PER_FLOW_EXCEEDED, Write
from engine_service.fingerprint import failed_step_fingerprint
from flowledger.errors import FlowledgerError, InternalError, InvalidArgument, ResourceExhausted
from flowledger_core.domain import FlowStatus

_ARTIFACT_ERRORS = {"ARTIFACT_CORRUPT": "ArtifactCorrupt", "ARTIFACT_MISSING": "ArtifactMissing"}
MAX_REASON = 1024


def artifact_error_type(exc: FlowledgerError) -> str | None:
    """The error type of an artifact the flow can never read again, else None."""
    if isinstance(exc, InternalError):
        return _ARTIFACT_ERRORS.get(exc.reason)
    return None


def refused_write_type(exc: FlowledgerError) -> str | None:
    """The error type of an append the store will refuse every time, else None."""
    if isinstance(exc, ResourceExhausted) and exc.reason == EVENTS_PER_FLOW_EXCEEDED:
        return None  # ended by writes.out_of_room
    if isinstance(exc, InvalidArgument | ResourceExhausted):
        return "WriteRefused"
    return None


def ending_write(
    flow_id: str, state: FlowState, generation: int, exc: FlowledgerError, error_type: str
) -> Write:
    """StepFailed (if the current step had started) + FlowFailed, for ``exc``."""
    init = state.init
    assert init is not None
    index = min(state.cursor, len(state.steps) - 1)
    step = state.steps[index]
    reason = f"{exc.reason}: {exc.message}"[:MAX_REASON]
    events: list[EngineEvent] = []
    if step.status is StepStatus.RUNNING:
        fingerprint = None
        if init.steps[index].continue_on_error:  # its failure carries a fingerprint (0010)
            fingerprint = failed_step_fingerprint(
                step_id=step.step_id,
                input_hashes=fingerprint_inputs_of(state, index),
                params=state.params_of(index),
                definition_hash=init.definition_hash,
                error_type=error_type,
            )
        events.append(
            StepFailed(step.step_id, index, step.attempt, reason, error_type, fingerprint)
        )
    events.append(FlowFailed(step.step_id, index, reason, error_type))
    command = command_id(flow_id, generation, index, step.attempt, "permanent-failure")
    return Write(tuple(events), command, new_status=FlowStatus.FAILED)
