"""Documents a user writes (flow definitions in JSON or YAML), parsed within bounds.

Every parser and walker of a user's document must survive hostile input: a document nested
10,000 deep, or a YAML "billion laughs" whose few hundred bytes of anchors and aliases stand for
megabytes. :func:`load_document` is the one way the engine and ``flowctl`` read one:

* **Depth.** More than ``max_depth`` levels of arrays and objects is refused, the same rule the
  store applies to inputs and payloads (``STORE_MAX_JSON_DEPTH``, 64 by default). JSON is parsed
  by the C parser, whose refusal of extreme depth becomes this refusal too; YAML's
  composer (recursive in PyYAML) is stopped at ``max_depth`` before it recurses further.
* **Expansion.** YAML aliases are allowed (a shared ``retry`` block is ordinary YAML), but PyYAML
  builds an alias as a reference to the same Python object, so a document is a graph whose
  *expanded* size can be exponential in its length. That size is computed on the graph (each
  distinct node once) and refused past ``max_expanded_bytes`` before anything walks the
  expanded tree; a document that refers to itself (``&a [*a]``) is refused too. The size counts
  what the value's JSON text would hold, so the bound is the definition size the store accepts.

Refusals raise :class:`DocumentError` (a ``ValueError``) with a message saying which bound was
passed; callers turn it into INVALID_ARGUMENT on their field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import yaml
from yaml.nodes import Node

from flowledger.canonical import JsonTooDeep, JsonValue, parse_json

__all__ = [
    "MAX_DOCUMENT_DEPTH",
    "MAX_EXPANDED_BYTES",
    "DocumentError",
    "DocumentFormat",
    "load_document",
]

MAX_DOCUMENT_DEPTH = 64
"""Levels of arrays and objects a document may nest (the store's default ``max_json_depth``)."""

MAX_EXPANDED_BYTES = 2 * 1024 * 1024
"""The most a document may stand for once its aliases are expanded, in bytes of JSON text (about):
the store's default ``max_payload_bytes``, the largest definition it would keep."""

DocumentFormat = Literal["json", "yaml"]


class DocumentError(ValueError):
    """The document is not one this module will hand on (see the module docstring)."""


def load_document(
    text: str,
    fmt: DocumentFormat,
    *,
    max_depth: int = MAX_DOCUMENT_DEPTH,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
) -> JsonValue:
    """The value of a JSON or YAML document, within the bounds of the module docstring
    (``max_expanded_bytes`` is YAML's: JSON has no aliases).

    Raises :class:`DocumentError` for a bound passed, ``ValueError`` for invalid JSON and
    ``yaml.YAMLError`` for invalid YAML.
    """
    if fmt == "json":
        try:
            value = parse_json(text)
        except JsonTooDeep:
            raise _too_deep(max_depth) from None
        # JSON has no aliases: its size is its text's, which the message and the store bound
        # (RESOURCE_EXHAUSTED there, as for any payload).
        _check_shape(value, max_depth, None)
        return value
    value = _load_yaml(text, max_depth)
    _check_shape(value, max_depth, max_expanded_bytes)
    return value


def _too_deep(max_depth: int) -> DocumentError:
    return DocumentError(f"is nested deeper than {max_depth} levels")


def _load_yaml(text: str, max_depth: int) -> JsonValue:
    loader = _BoundedLoader(text, max_depth)
    try:
        return loader.get_single_data()
    except RecursionError:  # a constructor's own recursion; the composer stops well before
        raise _too_deep(max_depth) from None
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose composer refuses to nest past ``max_depth``."""

    def __init__(self, stream: str, max_depth: int) -> None:
        super().__init__(stream)
        self._max_depth = max_depth
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner reads a flow collection ([ or {) ahead of the composer, and its search
        # for simple keys costs time quadratic in the nesting: stop it at the bound too.
        if self.flow_level >= self._max_depth:
            raise DocumentError(
                f"is nested deeper than {self._max_depth} levels (line {self.line + 1})"
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            if self._depth >= self._max_depth:
                raise DocumentError(
                    f"is nested deeper than {self._max_depth} levels "
                    f"(line {self.peek_event().start_mark.line + 1})"  # type: ignore[no-untyped-call]
                )
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


def _children(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield child
    elif isinstance(value, list):
        yield from value


def _own_bytes(value: object) -> int:
    """What ``value`` adds to its JSON text besides its children (about: quotes, commas)."""
    if isinstance(value, dict):
        return 2 + 2 * len(value)
    if isinstance(value, list):
        return 2 + len(value)
    if isinstance(value, str):
        return len(value) + 2
    return len(str(value))


def _check_shape(value: JsonValue, max_depth: int, max_expanded_bytes: int | None) -> None:
    """Refuse a value deeper than ``max_depth``, larger than ``max_expanded_bytes`` expanded
    (None: no size bound), or containing itself. Iterative, and each distinct container is
    visited once, so the cost is that of the document as written, not as expanded."""
    sizes: dict[int, int] = {}  # id of a finished container -> its expanded size
    depths: dict[int, int] = {}  # id of a finished container -> levels at and below it
    open_ids: set[int] = set()  # containers being visited: meeting one again is a cycle
    # (value, children iterator or None before the first visit, size so far, depth so far)
    stack: list[list[Any]] = [[value, None, 0, 0]]
    total = 0
    while stack:
        frame = stack[-1]
        node = frame[0]
        if frame[1] is None:
            if not isinstance(node, (dict, list)):
                stack.pop()
                total = _own_bytes(node)
                _finish_child(stack, total, 0)
                continue
            if id(node) in open_ids:
                raise DocumentError("refers to itself (a YAML alias inside its own anchor)")
            open_ids.add(id(node))
            frame[1] = _children(node)
            frame[2] = _own_bytes(node)
        child = next(frame[1], _DONE)
        if child is _DONE:
            stack.pop()
            open_ids.discard(id(node))
            size, depth = frame[2], frame[3] + 1
            if depth > max_depth:
                raise _too_deep(max_depth)
            sizes[id(node)], depths[id(node)] = size, depth
            total = size
            _finish_child(stack, size, depth)
            if max_expanded_bytes is not None and size > max_expanded_bytes:
                raise DocumentError(
                    f"stands for more than {max_expanded_bytes} bytes once its YAML aliases "
                    "are expanded"
                )
            continue
        if isinstance(child, (dict, list)) and id(child) in sizes:
            _finish_child(stack, sizes[id(child)], depths[id(child)])
            continue
        stack.append([child, None, 0, 0])
    if max_expanded_bytes is not None and total > max_expanded_bytes:
        raise DocumentError(f"is more than {max_expanded_bytes} bytes")


def _finish_child(stack: list[list[Any]], size: int, depth: int) -> None:
    if stack:
        parent = stack[-1]
        parent[2] += size
        parent[3] = max(parent[3], depth)


_DONE = object()
