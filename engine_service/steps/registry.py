"""The step type registry: named step functions with their kind and config schema.

Types are registered with a decorator::

    registry = StepRegistry()

    @registry.step("split", kind=StepKind.TRANSFORM, config_schema={"type": "object"})
    def split(ctx: StepContext) -> StepResult: ...

and deployments add their own without forking through the ``flowledger.steps`` entry-point
group: each entry point names either a :class:`StepType` or a callable that takes the registry
and registers into it (``my_pkg.steps:install``).

A type may hold resources (an HTTP connection pool): its ``cleanup`` is called by
:meth:`StepRegistry.aclose` when whoever owns the registry shuts down. Registries are layered
and the default one is shared by every engine in the process, so a cleanup releases what is held
*now* and the type stays usable (it acquires again, lazily, when next used).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from jsonschema.protocols import Validator

from engine_service.steps.context import StepFn, StepKind
from engine_service.validation import compile_schema, raise_if_any, violations
from flowledger.canonical import JsonValue
from flowledger.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flowledger.steps"

F = TypeVar("F", bound=StepFn)

# Checks a config beyond its JSON Schema (e.g. template syntax): violations under the path given.
ConfigCheck: TypeAlias = Callable[[Mapping[str, JsonValue], str], list[FieldViolation]]
# Releases what a step type holds; may return an awaitable (awaited by StepRegistry.aclose).
Cleanup: TypeAlias = Callable[[], "Awaitable[None] | None"]


@dataclass(frozen=True)
class StepType:
    """A registered step type. ``threaded`` runs a sync function in a worker thread, for steps
    that block (I/O, CPU); trivial sync steps run inline, which is cheaper."""

    name: str
    kind: StepKind
    fn: StepFn
    config_schema: Mapping[str, Any] | None = None
    description: str = ""
    threaded: bool = False
    # Kinds a definition may give this type besides ``kind`` (an HTTP call can be the Source).
    also_kinds: frozenset[StepKind] = frozenset()
    # Run after the schema passed: what JSON Schema cannot say (template syntax, ...).
    config_check: ConfigCheck | None = None
    # Called by StepRegistry.aclose/close; must leave the type usable (see the module docstring).
    cleanup: Cleanup | None = None
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 128:
            raise InvalidArgument.field("name", "a step type name has 1..128 characters")
        object.__setattr__(self, "also_kinds", frozenset(self.also_kinds))
        if self.config_schema is not None:
            object.__setattr__(self, "_validator", compile_schema(self.config_schema))

    def allows(self, kind: StepKind) -> bool:
        """Whether a step of this type may stand in a definition as ``kind``."""
        return kind is self.kind or kind in self.also_kinds

    def default_kind(self, first: bool) -> StepKind:
        """The kind a document step without ``kind`` gets: the Source when it comes first and
        this type may be one, else the type's own kind."""
        return StepKind.SOURCE if first and self.allows(StepKind.SOURCE) else self.kind

    def config_violations(self, config: JsonValue, path: str = "config") -> list[FieldViolation]:
        if not isinstance(config, dict):
            return [FieldViolation(path, "must be a JSON object")]
        found = [] if self._validator is None else violations(self._validator, config, path)
        if not found and self.config_check is not None:
            found = self.config_check(config, path)
        return found

    def validate_config(self, config: JsonValue, path: str = "config") -> None:
        """InvalidArgument naming each offending field under ``path``."""
        raise_if_any(self.config_violations(config, path), f"config of step type {self.name!r}")


class StepRegistry:
    """Step types by name. ``parent`` is consulted for names this registry does not hold, so a
    test or a builder can layer its own types over the default registry without changing it."""

    def __init__(self, parent: StepRegistry | None = None) -> None:
        self._parent = parent
        self._types: dict[str, StepType] = {}
        self._loaded_entry_points: set[str] = set()
        self._lock = threading.Lock()
        self._revision = 0

    def step(
        self,
        name: str,
        *,
        kind: StepKind,
        config_schema: Mapping[str, Any] | None = None,
        description: str = "",
        threaded: bool = False,
        also_kinds: frozenset[StepKind] = frozenset(),
        config_check: ConfigCheck | None = None,
        cleanup: Cleanup | None = None,
    ) -> Callable[[F], F]:
        """Decorator registering a step function under ``name``; returns the function unchanged."""

        def decorate(fn: F) -> F:
            self.register(
                StepType(
                    name=name,
                    kind=kind,
                    fn=fn,
                    config_schema=config_schema,
                    description=description or (fn.__doc__ or "").strip().split("\n")[0],
                    threaded=threaded,
                    also_kinds=also_kinds,
                    config_check=config_check,
                    cleanup=cleanup,
                )
            )
            return fn

        return decorate

    def register(self, step_type: StepType) -> StepType:
        """Add a type. Registering the same type again is a no-op; another type under a taken
        name is AlreadyExists (silently replacing a step would change what flows compute)."""
        with self._lock:
            existing = self._types.get(step_type.name)
            if existing is not None:
                if existing == step_type:
                    return existing
                raise AlreadyExists(
                    f"step type {step_type.name!r} is already registered "
                    f"(by {_describe(existing.fn)})",
                    reason="STEP_TYPE_EXISTS",
                    metadata={"step_type": step_type.name},
                )
            self._types[step_type.name] = step_type
            self._revision += 1
            return step_type

    @property
    def revision(self) -> int:
        """Grows with every type added here or to a parent: what was looked up at one revision
        is found the same at that revision (types are only ever added, never replaced)."""
        own = self._revision
        return own if self._parent is None else own + self._parent.revision

    def find(self, name: str) -> StepType | None:
        found = self._types.get(name)
        if found is None and self._parent is not None:
            return self._parent.find(name)
        return found

    def get(self, name: str) -> StepType:
        found = self.find(name)
        if found is None:
            raise NotFound(
                f"step type {name!r} is not registered "
                f"(known: {', '.join(self.names()) or 'none'})",
                reason="STEP_TYPE_NOT_FOUND",
                metadata={"step_type": name},
            )
        return found

    def name_of(self, fn: Callable[..., Any]) -> str | None:
        """The name ``fn`` is registered under, if it is."""
        for step_type in self._types.values():
            if step_type.fn is fn:
                return step_type.name
        return self._parent.name_of(fn) if self._parent is not None else None

    def names(self) -> list[str]:
        inherited = self._parent.names() if self._parent is not None else []
        return sorted(set(inherited) | set(self._types))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def child(self) -> StepRegistry:
        return StepRegistry(parent=self)

    def cleanups(self) -> list[tuple[str, Cleanup]]:
        """(type name, cleanup) of every type this registry resolves, its own first, then its
        parent's; a cleanup shared by several types (one connection pool) appears once."""
        seen: list[Cleanup] = []
        found: list[tuple[str, Cleanup]] = []
        registry: StepRegistry | None = self
        while registry is not None:
            with registry._lock:
                types = list(registry._types.values())
            for step_type in types:
                if step_type.cleanup is not None and step_type.cleanup not in seen:
                    seen.append(step_type.cleanup)
                    found.append((step_type.name, step_type.cleanup))
            registry = registry._parent
        return found

    async def aclose(self) -> None:
        """Call every type's cleanup once (see :meth:`cleanups`), awaiting those that return an
        awaitable. A failing cleanup is logged and the others still run: shutting down must not
        stop half-way. Parents are included, because the types they lend are in use here too;
        closing again later is fine (cleanups leave their types usable)."""
        for name, cleanup in self.cleanups():
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("cleanup of step type %r failed", name)

    def close(self) -> None:
        """:meth:`aclose` for code without a running event loop (it runs one to completion).
        Inside an event loop, await :meth:`aclose` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        raise RuntimeError("StepRegistry.close() inside a running event loop: await aclose()")

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load every entry point of ``group`` once; returns the names of those loaded now.

        A plugin that fails to import is FailedPrecondition: an engine that silently lacks a
        deployment's step types would fail its flows later and less clearly.
        """
        loaded: list[str] = []
        for entry_point in importlib.metadata.entry_points(group=group):
            key = f"{entry_point.name}={entry_point.value}"
            if key in self._loaded_entry_points:
                continue
            try:
                target = entry_point.load()
            except Exception as exc:
                raise FailedPrecondition(
                    f"step plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}",
                    reason="STEP_PLUGIN_FAILED",
                    metadata={"entry_point": key},
                ) from exc
            if isinstance(target, StepType):
                self.register(target)
            elif callable(target):
                target(self)
            else:
                raise FailedPrecondition(
                    f"step plugin {entry_point.name!r} ({entry_point.value}) is neither a "
                    "StepType nor a callable taking the registry",
                    reason="STEP_PLUGIN_FAILED",
                    metadata={"entry_point": key},
                )
            self._loaded_entry_points.add(key)
            loaded.append(entry_point.name)
            log.info("loaded step plugin %s", key)
        return loaded


def _describe(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
