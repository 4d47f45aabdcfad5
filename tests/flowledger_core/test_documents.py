"""flowledger_core.documents: the bounds every user document is parsed within (depth, YAML alias
expansion, self-reference), for JSON and YAML alike. Over the engine API in
tests/engine_service/api/test_deep_documents.py, through flowctl in
tests/clients/python/flowctl/test_commands.py."""

from __future__ import annotations

import pytest
import yaml

from flowledger_core.documents import (
    MAX_DOCUMENT_DEPTH,
    DocumentError,
    DocumentFormat,
    load_document,
)

FORMATS: tuple[DocumentFormat, ...] = ("json", "yaml")


def nested(depth: int) -> str:
    """``depth`` levels: arrays inside arrays with an object at the bottom (JSON, also YAML)."""
    return "[" * (depth - 1) + '{"a": 1}' + "]" * (depth - 1)


def laughs(levels: int) -> str:
    """A YAML document of ``levels`` anchors, each nine aliases of the one before."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_depth_bound_is_exact(fmt: DocumentFormat) -> None:
    value = load_document(nested(MAX_DOCUMENT_DEPTH), fmt)
    for _ in range(MAX_DOCUMENT_DEPTH - 1):
        (value,) = value
    assert value == {"a": 1}
    with pytest.raises(DocumentError, match=f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"):
        load_document(nested(MAX_DOCUMENT_DEPTH + 1), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_extreme_depth_is_refused_not_a_recursion_error(fmt: DocumentFormat, depth: int) -> None:
    with pytest.raises(DocumentError, match="nested deeper than"):
        load_document("[" * depth + "]" * depth, fmt)


def test_block_style_yaml_depth_is_bounded() -> None:
    with pytest.raises(DocumentError, match="nested deeper than 64 levels"):
        load_document("- " * 10_000 + "x\n", "yaml")
    with pytest.raises(DocumentError, match="nested deeper than 64 levels"):
        load_document("".join("  " * i + f"k{i}:\n" for i in range(100)), "yaml")


def test_depth_reached_through_aliases_counts() -> None:
    # Each anchor is shallow as written; expanded, the last is 70 levels deep.
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))
    with pytest.raises(DocumentError, match="nested deeper than 64 levels"):
        load_document(text, "yaml")


def test_an_alias_bomb_is_refused_by_its_expanded_size() -> None:
    with pytest.raises(DocumentError, match="once its YAML aliases are expanded"):
        load_document(laughs(9), "yaml")  # 9^9 strings: about 2 GB of JSON


def test_aliases_within_the_bound_expand_to_equal_values() -> None:
    value = load_document(laughs(3), "yaml")
    assert value["l2"] == [[["lol"] * 9] * 9] * 9
    shared = load_document("r: &r {max_attempts: 3}\nsteps: [{retry: *r}, {retry: *r}]\n", "yaml")
    assert shared["steps"] == [{"retry": {"max_attempts": 3}}] * 2


def test_the_expanded_size_bound_is_configurable() -> None:
    text = laughs(3)  # 729 strings of 5 bytes and some punctuation: ~4.5 kB expanded
    load_document(text, "yaml", max_expanded_bytes=10_000)
    with pytest.raises(DocumentError, match="more than 1000 bytes"):
        load_document(text, "yaml", max_expanded_bytes=1_000)


@pytest.mark.parametrize(
    "text",
    ["a: &a [*a]\n", "a: &a {b: *a}\n", "a: &a [1, [2, *a]]\n"],
)
def test_a_document_that_contains_itself_is_refused(text: str) -> None:
    with pytest.raises(DocumentError, match="refers to itself"):
        load_document(text, "yaml")


def test_invalid_documents_keep_their_parsers_errors() -> None:
    with pytest.raises(ValueError, match="Expecting") as caught:
        load_document("{nope", "json")
    assert not isinstance(caught.value, DocumentError)
    with pytest.raises(yaml.YAMLError):
        load_document("steps: [unclosed", "yaml")
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        load_document("[NaN]", "json")
