"""The built-in step runners: ``http`` (:mod:`.http`) and ``field_update`` (:mod:`.webhook`).

They are in the default registry (:func:`engine_service.steps.plugins.default_registry`);
:func:`install` puts them into any other. Both share one HTTP client pool (:mod:`.transport`),
released by the registry's ``aclose()``. Every connection they make is checked against an egress
policy (:mod:`engine_service.steps.egress`): the default one admits public addresses only;
``install(registry, egress=...)`` installs runners with another (the engine service's comes from
``ENGINE_EGRESS_ALLOW``). Docs: docs/step-runners.md.
"""

from __future__ import annotations

from engine_service.steps import http, transport, webhook
from engine_service.steps.egress import EgressPolicy
from engine_service.steps.registry import StepRegistry, StepType

STEP_TYPES: tuple[StepType, ...] = (http.STEP_TYPE, webhook.STEP_TYPE)


def step_types(egress: EgressPolicy) -> tuple[StepType, ...]:
    """Both runners over one client pool of their own that connects only where ``egress``
    admits."""
    pool = transport.ClientPool.for_policy(egress)
    return (http.step_type(pool), webhook.step_type(pool))


def install(registry: StepRegistry, egress: EgressPolicy | None = None) -> None:
    """Register the built-in runners (also usable as a ``flowledger.steps`` entry point); with
    ``egress``, runners bound to that policy instead of the default (public addresses only)."""
    for step_type in STEP_TYPES if egress is None else step_types(egress):
        registry.register(step_type)


__all__ = ["STEP_TYPES", "install", "step_types"]
