"""Binding a flow's recorded steps to this engine's step types, before it writes anything.

A run that cannot execute the flow faithfully must not touch its log: another fingerprint scheme
(ENGINE_VERSION_MISMATCH), a definition that is not the one the flow started with
(DEFINITION_MISMATCH), or step types this engine lacks (STEP_TYPES_UNAVAILABLE) are
FailedPrecondition.
"""

from __future__ import annotations

from engine_service.core.events import FlowInitialized
from engine_service.definitions.definition import FlowDefinition
from engine_service.fingerprint import ENGINE_VERSION
from engine_service.steps.registry import StepRegistry, StepType
from flowledger.errors import FailedPrecondition, InvalidArgument


def bind_step_types(
    flow_id: str,
    init: FlowInitialized,
    definition: FlowDefinition | None,
    registry: StepRegistry,
) -> tuple[StepType, ...]:
    if init.engine_version != ENGINE_VERSION:
        raise FailedPrecondition(
            f"flow {flow_id} was started under fingerprint scheme "
            f"{init.engine_version!r}; this engine computes {ENGINE_VERSION!r}",
            reason="ENGINE_VERSION_MISMATCH",
            metadata={"flow_id": flow_id, "engine_version": init.engine_version},
        )
    if definition is not None and (
        definition.definition_hash != init.definition_hash or definition.steps != init.steps
    ):
        raise FailedPrecondition(
            f"the definition given is not the one flow {flow_id} started with",
            reason="DEFINITION_MISMATCH",
            metadata={"flow_id": flow_id},
        )
    if definition is None:
        definition = FlowDefinition(init.definition_name, init.steps, init.definition_version)
    try:
        return definition.resolve(registry)
    except InvalidArgument as exc:
        raise FailedPrecondition(
            f"flow {flow_id} cannot run in this engine: {exc.message}",
            reason="STEP_TYPES_UNAVAILABLE",
            metadata={"flow_id": flow_id},
            violations=exc.violations,
        ) from exc
