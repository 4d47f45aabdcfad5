"""The fingerprint formulas, checked against an independent computation (hashlib + rfc8785)
and pinned to literal vectors that another language's implementation can reproduce."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from engine_service.fingerprint import (
    ENGINE_VERSION,
    artifact_hash,
    definition_hash,
    flow_fingerprint,
    step_fingerprint,
)

A = "a" * 64
B = "b" * 64


def oracle(value: Any) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def test_engine_version_is_the_scheme_not_the_package_version() -> None:
    assert ENGINE_VERSION == "flowledger-fp/1"


def test_artifact_hash_is_sha256_of_canonical_json() -> None:
    payload = {"b": [1, 2.0, "é"], "a": None}
    assert artifact_hash(payload) == oracle(payload)
    # Key order and number spelling do not matter; content does.
    assert artifact_hash({"a": None, "b": [1, 2, "é"]}) == artifact_hash(payload)
    assert artifact_hash({"a": None, "b": [1, 2, "e"]}) != artifact_hash(payload)


def test_definition_hash_is_of_the_ordered_step_ids_only() -> None:
    assert definition_hash(["seed", "split"]) == oracle(["seed", "split"])
    assert definition_hash(["seed", "split"]) != definition_hash(["split", "seed"])


def test_step_fingerprint_formula() -> None:
    fields = {
        "engine_version": ENGINE_VERSION,
        "step_id": "split",
        "inputs": [A, B],
        "params": {"n": 1},
        "definition_hash": "d" * 64,
    }
    got = step_fingerprint(
        step_id="split", input_hashes=[B, A], params={"n": 1}, definition_hash="d" * 64
    )
    assert got == oracle(fields)


def test_step_fingerprint_sorts_inputs_and_keeps_duplicates() -> None:
    def fp(inputs: list[str]) -> str:
        return step_fingerprint(step_id="s", input_hashes=inputs, params={}, definition_hash=A)

    assert fp([B, A]) == fp([A, B])
    assert fp([A, A]) != fp([A])


def test_step_fingerprint_changes_with_every_field() -> None:
    base: dict[str, Any] = {
        "step_id": "s",
        "input_hashes": [A],
        "params": {"x": 1},
        "definition_hash": B,
        "engine_version": ENGINE_VERSION,
    }
    reference = step_fingerprint(**base)
    for key, other in [
        ("step_id", "t"),
        ("input_hashes", [B]),
        ("params", {"x": 2}),
        ("definition_hash", A),
        ("engine_version", "flowledger-fp/2"),
    ]:
        assert step_fingerprint(**{**base, key: other}) != reference, key
    # Params are compared canonically: 1.0 and 1 are the same JSON number.
    assert step_fingerprint(**{**base, "params": {"x": 1.0}}) == reference


def test_flow_fingerprint_is_of_the_ordered_step_fingerprints() -> None:
    assert flow_fingerprint([A, B]) == oracle([A, B])
    assert flow_fingerprint([A, B]) != flow_fingerprint([B, A])


def test_pinned_vectors() -> None:
    """Literal values: any implementation of docs/decisions/0003-fingerprints.md must match."""
    assert definition_hash(["seed", "split", "print_and_count"]) == (
        "d5280a7821eac21594d64cd2dd5f891756bb869e672315ff51b7e6818b4ce974"
    )
    assert artifact_hash(None) == (
        "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
    )
    assert artifact_hash({"text": "Hola"}) == (
        "f7e6e665bfa96f0615a0b052717af4584d88c2d1c03ed2046c4e44b8520603a6"
    )
