"""Step types a replica loads at start-up: the built-in runners, entry points, then
``ENGINE_STEP_PLUGINS``.

:func:`default_registry` is the process-wide registry (built-in runners and entry points);
:func:`build_registry` a replica's, over it. Both live here, above
:mod:`engine_service.steps.registry` and :mod:`engine_service.steps.runners`: the runners import the
registry, which knows no runner.

Entry points (group ``flowledger.steps``) suit packaged step libraries; ``ENGINE_STEP_PLUGINS``
(``package.module:attribute``, comma-separated) suits a deployment's own module on the path, and
tests. Each attribute is a :class:`~engine_service.steps.registry.StepType` or a callable that takes
the registry and registers into it (like :func:`engine_service.definitions.samples.install`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence

from engine_service.steps.egress import EgressPolicy
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.runners import install as install_runners
from flowledger.errors import FlowledgerError
from flowledger_core.server.env import SettingsError

log = logging.getLogger(__name__)

VARIABLE = "ENGINE_STEP_PLUGINS"

_default: StepRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> StepRegistry:
    """The process-wide registry: the built-in runners (``http``, ``field_update``), then the
    ``flowledger.steps`` plugins, loaded on first use (not at import, so importing the engine has
    no side effects)."""
    global _default
    with _default_lock:
        if _default is None:
            registry = StepRegistry()
            install_runners(registry)  # http, field_update (engine_service/steps/)
            registry.load_plugins()
            _default = registry
        return _default


def build_registry(plugins: Sequence[str], egress: EgressPolicy | None = None) -> StepRegistry:
    """A registry over the process-wide one (entry points) with ``plugins`` installed, and with
    ``egress`` the built-in HTTP runners bound to that policy (over the default ones).
    SettingsError naming ``ENGINE_STEP_PLUGINS`` when one cannot be loaded."""
    try:
        registry = default_registry().child()
    except FlowledgerError as exc:
        raise SettingsError("flowledger.steps entry points", exc.message) from exc
    if egress is not None:
        install_runners(registry, egress)
    for entry in plugins:
        _install(registry, entry)
    return registry


def _install(registry: StepRegistry, entry: str) -> None:
    module_name, _, attribute = entry.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(VARIABLE, f"cannot load {entry!r}: {exc}") from exc
    try:
        if isinstance(target, StepType):
            registry.register(target)
        elif callable(target):
            target(registry)
        else:
            raise SettingsError(
                VARIABLE, f"{entry!r} is neither a StepType nor a callable taking the registry"
            )
    except FlowledgerError as exc:
        raise SettingsError(VARIABLE, f"{entry!r} failed to install: {exc.message}") from exc
    log.info("loaded step plugin %s", entry)
