"""What a step receives and what its fingerprint covers, read from a flow's state.

The run records these hashes with these functions (the planner, the task and wait steps, a
``when`` condition, a permanent failure) and verification recomputes them with the same ones
(:mod:`engine_service.run.verify`), so the two cannot disagree.
"""

from __future__ import annotations

from engine_service.core.events import FlowInitialized
from engine_service.core.replay import FlowState
from flowledger.errors import InternalError


def received_and_covered(
    state: FlowState, init: FlowInitialized, index: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What step ``index`` receives, and what its fingerprint hashes (the Source's adds the
    variables)."""
    if index == 0:
        received: tuple[str, ...] = (init.input_hash,)
        return received, received + ((init.variables_hash,) if init.variables_hash else ())
    received = state.steps[index - 1].output_hashes
    return received, received


def inputs_of(state: FlowState, index: int) -> tuple[str, ...]:
    """The hashes step ``index`` receives."""
    return received_and_covered(state, init_of(state), index)[0]


def fingerprint_inputs_of(state: FlowState, index: int) -> tuple[str, ...]:
    """The hashes step ``index``'s fingerprint covers (the first step's adds the variables)."""
    return received_and_covered(state, init_of(state), index)[1]


def finished_inputs_of(state: FlowState, index: int) -> tuple[str, ...]:
    """The hashes the fingerprint of step ``index`` finishing now covers, in the order its
    StepFinished records them (``input_hashes``): those of :func:`fingerprint_inputs_of`, then,
    for a ``signal`` step, the payload of the signal it consumes (its one output). The run
    records them with this function and verification recomputes them with it."""
    consumed = state.consumed_signal(index)
    signal = (consumed.payload_hash,) if consumed is not None else ()
    return fingerprint_inputs_of(state, index) + signal


def init_of(state: FlowState) -> FlowInitialized:
    """The flow's FlowInitialized; InternalError when the state has none."""
    if state.init is None:
        raise InternalError("the flow has no FlowInitialized")
    return state.init
