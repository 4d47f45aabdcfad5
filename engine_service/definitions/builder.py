"""A fluent builder for flow definitions in Python (seed chem-core ``FlowEngine::new()...``)::

    definition = (
        Flow("chem")
        .source("seed", seed_fn, text="Hola")          # a plain function
        .transform("split", "chem.split")               # or a registered type name
        .sink("print_and_count", print_and_count_fn)
        .build()
    )

A function registered in the builder's ``registry`` is referred to by its registered name; any
other function becomes a step type named after it (``module.qualname``) that travels with the
definition (:attr:`FlowDefinition.bindings`), so a flow built in code runs without registering
anything; such a definition runs in this process only (another process cannot resolve the
name). Keyword arguments are the step's params; ``.options(...)`` sets the failure handling
of the step added last, and ``Flow(..., retry=, timeout_ms=)`` the definition's defaults
(decision 0010).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine_service.definitions.definition import Compensation, FlowDefinition, StepSpec
from engine_service.steps.builtin import SIGNAL, TASK, WAIT
from engine_service.steps.context import StepFn, StepKind
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.retry import RetryPolicy
from flowledger.canonical import JsonValue


class Flow:
    def __init__(
        self,
        name: str,
        *,
        registry: StepRegistry | None = None,
        version: int = 0,
        retry: RetryPolicy | None = None,
        timeout_ms: int | None = None,
    ):
        self._name = name
        self._retry = retry
        self._timeout_ms = timeout_ms
        self._version = version
        self._registry = registry
        self._steps: list[StepSpec] = []
        self._bindings: dict[str, StepType] = {}

    def source(self, step_id: str, step: str | StepFn, /, **params: JsonValue) -> Flow:
        return self.step(step_id, step, StepKind.SOURCE, **params)

    def transform(self, step_id: str, step: str | StepFn, /, **params: JsonValue) -> Flow:
        return self.step(step_id, step, StepKind.TRANSFORM, **params)

    def sink(self, step_id: str, step: str | StepFn, /, **params: JsonValue) -> Flow:
        return self.step(step_id, step, StepKind.SINK, **params)

    def step(
        self, step_id: str, step: str | StepFn, kind: StepKind, /, **params: JsonValue
    ) -> Flow:
        """Append a step of any kind (the kind-named methods are shorthands)."""
        type_name = step if isinstance(step, str) else self._bind(step, kind)
        self._steps.append(StepSpec(step_id, type_name, kind, dict(params)))
        return self

    def wait(
        self,
        step_id: str,
        seconds: float | None = None,
        reason: str = "",
        *,
        until: str | None = None,
        duration: str | None = None,
    ) -> Flow:
        """A durable timer of ``seconds``, ``until`` an RFC 3339 time or for a ``duration``
        (``30d``, ``1h30m``; one of the three, up to a year): the flow waits holding no worker;
        the step passes its inputs through."""
        params: dict[str, JsonValue] = {}
        for key, value in (("seconds", seconds), ("until", until), ("duration", duration)):
            if value is not None:
                params[key] = value
        if reason:
            params["reason"] = reason
        return self._builtin(step_id, WAIT, params)

    def signal(
        self,
        step_id: str,
        name: str,
        *,
        timeout_seconds: float | None = None,
        default: JsonValue = None,
        on_timeout: str = "fail",
    ) -> Flow:
        """Wait for the signal ``name`` (SignalFlow); its payload is the step's output."""
        params: dict[str, JsonValue] = {"name": name}
        if timeout_seconds is not None:
            params["timeout_seconds"] = timeout_seconds
            params["on_timeout"] = on_timeout
            if on_timeout == "default":
                params["default"] = default
        return self._builtin(step_id, SIGNAL, params)

    def task(self, step_id: str, queue: str, *, timeout_seconds: float | None = None) -> Flow:
        """Hand the step to external workers polling ``queue`` (worker.proto)."""
        params: dict[str, JsonValue] = {"queue": queue}
        if timeout_seconds is not None:
            params["timeout_seconds"] = timeout_seconds
        return self._builtin(step_id, TASK, params)

    def options(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout_ms: int | None = None,
        step_timeout_ms: int | None = None,
        continue_on_error: bool = False,
        when: str | None = None,
        compensate: str | StepFn | None = None,
        compensate_params: dict[str, JsonValue] | None = None,
        commit: bool = False,
    ) -> Flow:
        """Failure handling of the step added last (checked by :meth:`build`):
        ``compensate`` undoes it if the flow later fails or is cancelled (saga); ``commit``
        makes its side effect at-most-once."""
        if not self._steps:
            raise ValueError("options() applies to the step added last; add a step first")
        last = self._steps[-1]
        compensation = None
        if compensate is not None:
            name = (
                compensate
                if isinstance(compensate, str)
                else self._bind(compensate, StepKind.TRANSFORM)
            )
            compensation = Compensation(name, compensate_params or {})
        self._steps[-1] = replace(
            last,
            retry=retry,
            timeout_ms=timeout_ms,
            step_timeout_ms=step_timeout_ms,
            continue_on_error=continue_on_error,
            when=when,
            compensate=compensation,
            commit=commit,
        )
        return self

    def _builtin(self, step_id: str, type_name: str, params: dict[str, JsonValue]) -> Flow:
        kind = StepKind.SOURCE if not self._steps else StepKind.TRANSFORM
        self._steps.append(StepSpec(step_id, type_name, kind, params))
        return self

    def build(self) -> FlowDefinition:
        """The definition (rules checked: InvalidArgument names the offending step)."""
        return FlowDefinition(
            self._name,
            tuple(self._steps),
            self._version,
            dict(self._bindings),
            default_retry=self._retry,
            default_timeout_ms=self._timeout_ms,
        )

    def _bind(self, fn: Callable[..., Any], kind: StepKind) -> str:
        if self._registry is not None:
            registered = self._registry.name_of(fn)
            if registered is not None:
                return registered
        base = f"{getattr(fn, '__module__', '_')}.{getattr(fn, '__qualname__', repr(fn))}"[:120]
        name, n = base, 1
        # Lambdas and closures share qualified names, and a type has one kind: number the
        # later ones (``...<lambda>#2``) so each (function, kind) gets its own type.
        while (bound := self._bindings.get(name)) is not None:
            if bound.fn is fn and bound.kind is kind:
                return name
            n += 1
            name = f"{base}#{n}"
        self._bindings[name] = StepType(name, kind, fn)
        return name
