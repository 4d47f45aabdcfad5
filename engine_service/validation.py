"""JSON Schema validation that reports field paths a person can act on (``steps[1].config.count``).

The ``jsonschema`` library does the validating; this module only turns its errors into
:class:`flowledger.errors.FieldViolation` values, naming the offending field itself for
``required`` and ``additionalProperties`` errors (jsonschema reports those at the parent object).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

from flowledger.canonical import JsonValue
from flowledger.errors import FieldViolation, InvalidArgument

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def json_path(prefix: str, parts: Iterable[str | int]) -> str:
    """``json_path("steps[1].config", ["count"])`` → ``steps[1].config.count``."""
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}" if path else part
        else:
            # Keys that are not identifiers are quoted so the path stays unambiguous.
            path += f"[{part!r}]"
    return path


def compile_schema(schema: Mapping[str, Any], field: str = "config_schema") -> Validator:
    """A validator for ``schema`` (its ``$schema`` dialect, else 2020-12), checked up front."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except SchemaError as exc:
        raise InvalidArgument.field(field, f"not a valid JSON Schema: {exc.message}") from exc
    validator: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


def violations(validator: Validator, instance: JsonValue, prefix: str) -> list[FieldViolation]:
    """Every way ``instance`` breaks the schema, one violation per field, in a stable order."""
    found: dict[tuple[str, str], FieldViolation] = {}
    errors = sorted(
        validator.iter_errors(instance),
        key=lambda e: ([str(p) for p in e.absolute_path], e.message),
    )
    for error in errors:
        for violation in _explain(error, prefix):
            found.setdefault((violation.field, violation.description), violation)
    return list(found.values())


def _explain(error: ValidationError, prefix: str) -> list[FieldViolation]:
    parts: Sequence[str | int] = list(error.absolute_path)
    here = error.instance
    required = error.validator_value
    if error.validator == "required" and isinstance(here, dict) and isinstance(required, list):
        missing = [name for name in required if name not in here]
        return [
            FieldViolation(json_path(prefix, [*parts, name]), "is required") for name in missing
        ]
    if (
        error.validator == "additionalProperties"
        and isinstance(here, dict)
        and isinstance(error.schema, dict)
    ):
        known = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        extras = [
            key
            for key in sorted(here)
            if key not in known and not any(p.search(key) for p in patterns)
        ]
        if extras:
            return [
                FieldViolation(json_path(prefix, [*parts, key]), "is not a known field")
                for key in extras
            ]
    return [FieldViolation(json_path(prefix, parts) or "(root)", error.message)]


def raise_if_any(found: Sequence[FieldViolation], what: str) -> None:
    """One InvalidArgument carrying every violation; its message names the first field."""
    if not found:
        return
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise InvalidArgument(
        f"invalid {what}: {first.field}: {first.description}{more}", violations=found
    )
