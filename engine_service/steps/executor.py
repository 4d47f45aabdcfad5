"""Running one step function and turning what it returned into storable artifacts.

Whatever a step does wrong becomes a recorded :class:`StepFailure` rather than an engine error:
an exception (error_type = the exception's class), a value that is not a step result
(``InvalidResult``), an output or signal payload that is not canonical, storable JSON
(``InvalidOutput``). ``BaseException`` that is not ``Exception`` (cancellation, exit) propagates:
the process is going away, and the step will run again on recovery. An exception is also logged,
with its traceback and the flow's and step's ids, as a WARNING of this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from engine_service.steps.context import Signal, StepContext, StepFailure, StepSuccess
from engine_service.steps.registry import StepType
from engine_service.steps.retry import TIMEOUT_ERROR_TYPE
from flowledger.canonical import JsonValue, canonical_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedArtifact:
    """An artifact ready for the store: its hash, canonical text and parsed payload."""

    hash: str
    payload_json: str
    payload: JsonValue


COMMIT_INTERRUPTED = "CommitInterrupted"


@dataclass(frozen=True)
class Outcome:
    """A step's result, validated: outputs and signals ready to record, or a failure.
    ``output_hashes`` (instead of ``outputs``) names outputs already stored: a wait passing
    its inputs through, a signal's payload."""

    outputs: tuple[PreparedArtifact, ...] = ()
    signals: tuple[Signal, ...] = ()
    failure: StepFailure | None = None
    output_hashes: tuple[str, ...] = ()


def prepare(value: JsonValue) -> PreparedArtifact:
    """Canonicalize and hash a payload. ValueError when it is not JSON the store can keep."""
    try:
        raw = canonical_bytes(value)
    except Exception as exc:  # rfc8785 raises several types for values JSON cannot carry
        raise ValueError(f"not representable as canonical JSON: {exc}") from exc
    if _has_nul(value):
        # Postgres jsonb refuses U+0000 in text: fail the step, not the append.
        raise ValueError("contains \\u0000, which the store cannot keep")
    # The same bytes content_hash() hashes, hashed once.
    return PreparedArtifact(hashlib.sha256(raw).hexdigest(), raw.decode("utf-8"), value)


def _has_nul(value: JsonValue) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def execute_attempt(
    step_type: StepType, ctx: StepContext, timeout_ms: int | None
) -> Outcome:
    """:func:`execute` bounded by ``timeout_ms``: an overrun is a failure of type ``Timeout``.
    A threaded step's thread cannot be stopped: it runs on, its result ignored."""
    if timeout_ms is None:
        return await execute(step_type, ctx)
    try:
        return await asyncio.wait_for(execute(step_type, ctx), timeout_ms / 1000)
    except TimeoutError:
        return Outcome(
            failure=StepFailure(
                f"attempt {ctx.attempt} exceeded its timeout of {timeout_ms} ms",
                TIMEOUT_ERROR_TYPE,
            )
        )


async def execute(step_type: StepType, ctx: StepContext) -> Outcome:
    try:
        if step_type.threaded and not inspect.iscoroutinefunction(step_type.fn):
            result: object = await asyncio.to_thread(step_type.fn, ctx)
        else:
            result = step_type.fn(ctx)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        # The log keeps what the event cannot: where the step's code raised.
        log.warning(
            "step %s (type %s) of flow %s in namespace %s raised on attempt %d",
            ctx.step_id, step_type.name, ctx.flow_id, ctx.namespace, ctx.attempt, exc_info=True,
        )  # fmt: skip
        return Outcome(failure=StepFailure(str(exc) or repr(exc), type(exc).__qualname__))
    if isinstance(result, StepFailure):
        return Outcome(failure=result)
    if not isinstance(result, StepSuccess):
        return Outcome(
            failure=StepFailure(
                f"step {ctx.step_id!r} returned {type(result).__name__}, "
                "not StepSuccess or StepFailure",
                "InvalidResult",
            )
        )
    return _validated(result.outputs, result.signals)


def _validated(outputs: Iterable[JsonValue], signals: Iterable[Signal]) -> Outcome:
    prepared: list[PreparedArtifact] = []
    for index, value in enumerate(outputs):
        try:
            prepared.append(prepare(value))
        except ValueError as exc:
            return Outcome(failure=StepFailure(f"outputs[{index}]: {exc}", "InvalidOutput"))
    checked: list[Signal] = []
    for index, signal in enumerate(signals):
        if not isinstance(signal.name, str) or not 1 <= len(signal.name) <= 128:
            return Outcome(
                failure=StepFailure(
                    f"signals[{index}].name: must be 1..128 characters", "InvalidOutput"
                )
            )
        try:
            checked.append(Signal(signal.name, prepare(signal.payload).payload))
        except ValueError as exc:
            return Outcome(failure=StepFailure(f"signals[{index}].payload: {exc}", "InvalidOutput"))
    return Outcome(outputs=tuple(prepared), signals=tuple(checked))
