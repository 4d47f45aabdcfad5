"""Branching a finished or failed flow at a step, optionally with other params for the rest.

The branch is the store's copy-on-write branch of the parent at the *fork version*: the version
of the StepFinished of the step before ``at_step`` (of FlowInitialized when ``at_step`` is the
first step). Its log reads as the parent's prefix followed by its own events, the first of which
is always a :class:`PropertyPreferenceAssigned` with the branch's params for ``at_step`` and
later steps; then it runs like any flow. Because a step fingerprint depends only on the step id,
its inputs, its params and the definition hash, the branch's fingerprints equal those of a fresh
run with the same input and the changed params. See docs/decisions/0007-branch-params.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from engine_service.core.event_codec import decode
from engine_service.core.events import PropertyPreferenceAssigned, StepFinished
from engine_service.core.ids import flow_id_for_key
from engine_service.core.replay import FlowState, StepStatus, apply
from engine_service.definitions.definition import FlowDefinition, canonical_params
from engine_service.fingerprint import ENGINE_VERSION
from engine_service.run.flow_host import FlowHost
from engine_service.run.flow_run import FlowRun
from engine_service.steps.registry import StepType
from engine_service.validation import json_path, raise_if_any
from flowledger.canonical import JsonValue, canonical_bytes
from flowledger.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument
from flowledger_core.domain import FlowStatus, NewBranch

OVERRIDES_FIELD = "params_overrides"


@dataclass(frozen=True)
class _ParentLog:
    state: FlowState
    init_version: int
    finished_at: Mapping[int, int]  # step index -> version of its StepFinished


async def branch_flow(
    engine: FlowHost,
    namespace: str,
    flow_id: str,
    at_step: str,
    params_overrides: Mapping[str, Mapping[str, JsonValue]],
    *,
    idempotency_key: str | None,
    started_by: str,
    definition: FlowDefinition | None,
) -> FlowRun:
    """See :meth:`engine_service.run.engine.Engine.branch`. Everything is checked before the
    branch is created; a failure writes nothing."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 256:
        raise InvalidArgument.field("idempotency_key", "must be 1..256 characters")
    parent = await engine.store.get_flow(namespace, flow_id)
    scanned = await _scan(engine, namespace, flow_id)
    state = scanned.state
    init = state.init
    if init is None or not state.terminal:
        raise FailedPrecondition(
            f"flow {flow_id} has not ended: only a completed or failed flow can be branched",
            reason="FLOW_NOT_ENDED",
            metadata={"flow_id": flow_id},
        )
    if init.engine_version != ENGINE_VERSION:
        raise FailedPrecondition(
            f"flow {flow_id} ran under fingerprint scheme {init.engine_version!r}; this engine "
            f"computes {ENGINE_VERSION!r}",
            reason="ENGINE_VERSION_MISMATCH",
            metadata={"flow_id": flow_id, "engine_version": init.engine_version},
        )
    if at_step not in init.step_ids:
        raise InvalidArgument.field(
            "at_step", f"flow {flow_id} has no step {at_step!r} (steps: {', '.join(init.step_ids)})"
        )
    at = init.step_ids.index(at_step)
    if at > 0 and state.steps[at - 1].status is not StepStatus.FINISHED_OK:
        raise FailedPrecondition(
            f"flow {flow_id} never finished step {init.step_ids[at - 1]!r}, so it cannot be "
            f"branched at {at_step!r}",
            reason="STEP_NOT_REACHED",
            metadata={"flow_id": flow_id, "at_step": at_step},
        )
    if definition is not None and (
        definition.definition_hash != init.definition_hash or definition.steps != init.steps
    ):
        raise FailedPrecondition(
            f"the definition given is not the one flow {flow_id} ran",
            reason="DEFINITION_MISMATCH",
            metadata={"flow_id": flow_id},
        )
    types = _step_types(engine, definition, state, at)
    wanted = PropertyPreferenceAssigned(_branch_params(state, at, params_overrides, types))

    fork_version = scanned.init_version if at == 0 else scanned.finished_at[at - 1]
    branch_id = (
        flow_id_for_key(namespace, idempotency_key)
        if idempotency_key is not None
        else str(uuid.uuid4())
    )
    try:
        flow, existed = await engine.store.create_branch(
            NewBranch(
                namespace=namespace,
                parent_flow_id=parent.flow_id,
                fork_version=fork_version,
                name=parent.name,
                flow_id=branch_id,
                metadata_json=canonical_bytes({"at_step": at_step}).decode("utf-8"),
                created_by=started_by,
                status=FlowStatus.QUEUED,
            )
        )
    except AlreadyExists as exc:
        raise _key_reused(idempotency_key, branch_id) from exc
    run = FlowRun(engine, flow, definition, fresh=False)
    run.existed = existed
    recorded = await run.assign_branch_params(wanted)
    if recorded != wanted:
        raise _key_reused(idempotency_key, branch_id)
    return run


async def _scan(engine: FlowHost, namespace: str, flow_id: str) -> _ParentLog:
    """The parent's state, replayed from its whole log (never a snapshot: the versions of its
    StepFinished events are needed)."""
    state = FlowState()
    init_version = 0
    finished_at: dict[int, int] = {}
    async for chunk in engine.store.read_events(
        namespace, flow_id, chunk_size=engine.settings.read_chunk_size
    ):
        for stored in chunk:
            event = decode(stored.type, stored.payload_json)
            state = apply(state, event, stored.version)
            if state.init is not None and init_version == 0:
                init_version = stored.version
            if isinstance(event, StepFinished):
                finished_at[event.index] = stored.version
    return _ParentLog(state, init_version, finished_at)


def _step_types(
    engine: FlowHost, definition: FlowDefinition | None, state: FlowState, at: int
) -> dict[str, StepType]:
    """The types of the steps the branch will run: it must be able to run every one."""
    assert state.init is not None
    found: dict[str, StepType] = {}
    missing: list[FieldViolation] = []
    for index in range(at, len(state.init.steps)):
        spec = state.init.steps[index]
        bound = definition.bindings.get(spec.type) if definition is not None else None
        step_type = bound or engine.registry.find(spec.type)
        if step_type is None:
            missing.append(
                FieldViolation(f"steps[{index}].type", f"step type {spec.type!r} not registered")
            )
        else:
            found[spec.id] = step_type
    if missing:
        raise FailedPrecondition(
            f"the branch cannot run in this engine: {missing[0].description}",
            reason="STEP_TYPES_UNAVAILABLE",
            violations=missing,
        )
    return found


def _branch_params(
    state: FlowState,
    at: int,
    overrides: Mapping[str, Mapping[str, JsonValue]],
    types: Mapping[str, StepType],
) -> dict[str, Mapping[str, JsonValue]]:
    """What the branch's PropertyPreferenceAssigned records: the parent's own overrides of
    ``at_step`` and later steps (a branch of a branch keeps them), replaced by those given."""
    assert state.init is not None
    step_ids = state.init.step_ids
    params: dict[str, Mapping[str, JsonValue]] = {
        step_id: state.overrides[step_id] for step_id in step_ids[at:] if step_id in state.overrides
    }
    if not isinstance(overrides, Mapping):
        raise InvalidArgument.field(OVERRIDES_FIELD, "must map step ids to params objects")
    found: list[FieldViolation] = []
    for step_id, given in overrides.items():
        path = json_path(OVERRIDES_FIELD, [str(step_id)])
        if step_id not in step_ids:
            found.append(FieldViolation(path, f"no step {step_id!r} in the flow"))
            continue
        if step_ids.index(step_id) < at:
            found.append(
                FieldViolation(
                    path, f"step {step_id!r} comes before at_step {step_ids[at]!r}: it is reused"
                )
            )
            continue
        value, problem = canonical_params(given)
        if problem:
            found.append(FieldViolation(path, problem))
            continue
        found.extend(types[step_id].config_violations(value, path))
        params[step_id] = value
    raise_if_any(found, "branch params")
    return params


def _key_reused(key: str | None, flow_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"idempotency key {key!r} already made flow {flow_id} as another branch (other parent, "
        "step, params or creator) or as another flow",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"flow_id": flow_id},
    )
