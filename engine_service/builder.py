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

from engine_service.definition import FlowDefinition, StepSpec
from engine_service.registry import StepRegistry, StepType
from engine_service.retry import RetryPolicy
from engine_service.steps import StepFn, StepKind
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

    def options(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout_ms: int | None = None,
        continue_on_error: bool = False,
        when: str | None = None,
    ) -> Flow:
        """Failure handling of the step added last (checked by :meth:`build`)."""
        if not self._steps:
            raise ValueError("options() applies to the step added last; add a step first")
        last = self._steps[-1]
        self._steps[-1] = replace(
            last,
            retry=retry,
            timeout_ms=timeout_ms,
            continue_on_error=continue_on_error,
            when=when,
        )
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
