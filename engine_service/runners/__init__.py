"""The built-in step runners: ``http`` (:mod:`.http`) and ``field_update`` (:mod:`.webhook`).

They are in the default registry (:func:`engine_service.registry.default_registry`); :func:`install`
puts them into any other. Both share one HTTP client pool (:mod:`.transport`), released by the
registry's ``aclose()``. Docs: docs/step-runners.md.
"""

from __future__ import annotations

from engine_service.registry import StepRegistry, StepType
from engine_service.runners import http, webhook

STEP_TYPES: tuple[StepType, ...] = (http.STEP_TYPE, webhook.STEP_TYPE)


def install(registry: StepRegistry) -> None:
    """Register the built-in runners (also usable as a ``flowledger.steps`` entry point)."""
    for step_type in STEP_TYPES:
        registry.register(step_type)


__all__ = ["STEP_TYPES", "install"]
