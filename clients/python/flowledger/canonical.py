"""Canonical JSON (RFC 8785) and content hashes.

Hashes must be reproducible in any language, so the canonical form is RFC 8785 (JCS), produced by
the ``rfc8785`` library rather than by ``json.dumps`` options that only approximate it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

JsonValue = Any
"""A value that ``json.loads`` can return."""


def canonical_bytes(value: JsonValue) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``."""
    return rfc8785.dumps(value)


def content_hash(value: JsonValue) -> str:
    """Lower-case hex sha256 of the canonical form: the artifact hash."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def parse_json(text: str) -> JsonValue:
    """Parse JSON text strictly: NaN and Infinity are not JSON and are refused, and so is text
    nested deeper than the parser's recursion allows (``ValueError`` either way, the latter a
    :class:`JsonTooDeep`, never ``RecursionError``; callers that bound depth lower check the
    parsed value)."""

    def _refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not valid JSON")

    try:
        return json.loads(text, parse_constant=_refuse)
    except RecursionError:
        raise JsonTooDeep("is nested too deeply to parse") from None


class JsonTooDeep(ValueError):
    """JSON text nested deeper than the parser's recursion allows."""
