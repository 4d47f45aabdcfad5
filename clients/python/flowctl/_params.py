"""Branch params from the command line: ``--param step.key.sub=VALUE`` as a JSON merge patch.

A dotted param sets that key of the step's params and keeps the rest (RFC 7386, JSON Merge
Patch: a nested object merges key by key, ``null`` removes the key, any other value replaces it).
The engine's BranchFlow takes each named step's params whole (docs/decisions/0007), so flowctl
applies the patch to the params the parent flow runs the step with (its definition's config, or
its own branch's params) and sends the result. The merge is these dozen lines rather than a
dependency: the PyPI packages for it are unmaintained single-function modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click


def parse_params(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``step.key[.sub...]=value`` pairs as one merge patch per step; values are JSON when they
    parse, else text."""
    patches: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, eq, raw = pair.partition("=")
        step, *path = target.split(".")
        if not eq or not step or not path or not all(path):
            raise click.BadParameter(
                f"{pair!r} is not step.key=value (or step.key.sub=value)", param_hint="--param"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for key in reversed(path):
            value = {key: value}
        patches[step] = _combined(patches.get(step, {}), value)
    return patches


def _combined(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """Two patches as one (a null stays: it removes the key from the target)."""
    both = dict(first)
    for key, value in then.items():
        earlier = both.get(key)
        both[key] = (
            _combined(earlier, value)
            if isinstance(earlier, dict) and isinstance(value, dict)
            else value
        )
    return both


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 section 2: ``patch`` applied to ``target``."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def patched(
    current: Mapping[str, Mapping[str, Any]], patches: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each patched step's whole new params: its current params with its patch applied."""
    return {step: merge_patch(current.get(step, {}), patch) for step, patch in patches.items()}
