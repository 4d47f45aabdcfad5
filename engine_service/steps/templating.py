"""``{{ expr }}`` placeholders in step configs, evaluated as JMESPath over the step's data.

The data a placeholder sees (:func:`template_data`)::

    {"input": <flow input>, "variables": {...}, "results": {step_id: [payloads]},
     "inputs": [payloads of the previous step], "params": <the step's own config>}

A string that is exactly one placeholder becomes the value itself, with its JSON type
(``"{{ input.count }}"`` → ``3``); anywhere else a value is interpolated as text: strings as
they are, other values as canonical JSON. A placeholder that is not valid JMESPath is refused
when the definition is stored (:func:`problems`); one that evaluates to null is a
:class:`TemplateError` when the step runs, because a typo (``inptu.id``) would otherwise send
``null`` somewhere. For an optional value, give JMESPath a default: ``{{ input.x || 'none' }}``.
A literal ``{{`` is written ``{{ '{{' }}``. No eval: JMESPath cannot call out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from engine_service.steps.context import StepContext
from engine_service.validation import json_path
from flowledger.canonical import JsonValue, canonical_bytes
from flowledger.errors import FieldViolation

PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
ROOTS = ("input", "variables", "results", "inputs", "params")
ERROR_TYPE = "TemplateError"


class TemplateError(Exception):
    """A placeholder could not be evaluated (bad syntax, a failing function, a null result)."""


def template_data(ctx: StepContext) -> dict[str, JsonValue]:
    """What placeholders of ``ctx``'s step are evaluated over."""
    return {
        "input": ctx.flow_input,
        "variables": dict(ctx.variables),
        "results": {step: [a.payload for a in found] for step, found in ctx.results.items()},
        "inputs": ctx.input_payloads,
        "params": dict(ctx.params),
    }


def has_placeholder(text: str) -> bool:
    return PLACEHOLDER.search(text) is not None


def render(value: JsonValue, data: JsonValue) -> JsonValue:
    """``value`` with every string in it rendered (object keys are kept as written)."""
    if isinstance(value, str):
        return render_string(value, data)
    if isinstance(value, list):
        return [render(item, data) for item in value]
    if isinstance(value, dict):
        return {key: render(item, data) for key, item in value.items()}
    return value


def render_string(template: str, data: JsonValue) -> JsonValue:
    """One whole placeholder → its value (any JSON type); otherwise the interpolated text."""
    found = list(PLACEHOLDER.finditer(template))
    if not found:
        return template
    if len(found) == 1 and found[0].span() == (0, len(template)):
        return _evaluate(found[0].group(1), data)
    return PLACEHOLDER.sub(lambda m: as_text(_evaluate(m.group(1), data)), template)


def render_text(template: str, data: JsonValue) -> str:
    """``template`` rendered and then made text (for URLs, headers, query parameters)."""
    return as_text(render_string(template, data))


def as_text(value: JsonValue) -> str:
    """Strings as they are, anything else as its canonical JSON text."""
    if isinstance(value, str):
        return value
    return canonical_bytes(value).decode("utf-8")


def problems(value: JsonValue, path: str) -> list[FieldViolation]:
    """Every string in ``value`` whose placeholders are not valid, by field path (for checking
    a config before it is stored)."""
    found: list[FieldViolation] = []
    if isinstance(value, str):
        found.extend(FieldViolation(path, why) for why in _string_problems(value))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(problems(item, json_path(path, [index])))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.extend(problems(item, json_path(path, [key])))
    return found


def check_fields(
    config: Mapping[str, JsonValue], path: str, keys: tuple[str, ...]
) -> list[FieldViolation]:
    """:func:`problems` of the templated ``keys`` of a config."""
    found: list[FieldViolation] = []
    for key in keys:
        if key in config:
            found.extend(problems(config[key], json_path(path, [key])))
    return found


def _string_problems(template: str) -> list[str]:
    found: list[str] = []
    for match in PLACEHOLDER.finditer(template):
        expression = match.group(1)
        if not expression:
            found.append("empty placeholder {{ }}")
            continue
        try:
            _compiled(expression)
        except JMESPathError as exc:
            found.append(f"placeholder {{{{ {expression} }}}} is not valid JMESPath: {exc}")
    if "{{" in PLACEHOLDER.sub("", template):
        found.append("'{{' without a closing '}}' (write a literal '{{' as {{ '{{' }})")
    return found


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> ParsedResult:
    return jmespath.compile(expression)


def _evaluate(expression: str, data: JsonValue) -> JsonValue:
    shown = f"{{{{ {expression} }}}}"
    try:
        result: JsonValue = _compiled(expression).search(data)
    except JMESPathError as exc:
        raise TemplateError(f"{shown}: {exc}") from exc
    if result is None:
        raise TemplateError(
            f"{shown} is null: no such value in the step's data (it has "
            f"{', '.join(ROOTS)}); give a default with || if it is optional"
        )
    return result
