"""The shared cross-language vectors (tests/vectors/) hold for the Python engine.

Each value was written by scripts/gen_vectors.py from the engine's own functions; these tests
check that the engine still produces them and, independently of it, that they are right: literal
outputs from RFC 8785, key order by UTF-16 code units, hashlib over the stored canonical text, and
the pinned fingerprints of docs/decisions/0003-fingerprints.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from engine_service.fingerprint import (
    ENGINE_VERSION,
    artifact_hash,
    definition_hash,
    flow_fingerprint,
    step_fingerprint,
)
from flowledger.canonical import canonical_bytes, content_hash, parse_json

VECTORS = Path(__file__).resolve().parent / "vectors"
CANONICAL: dict[str, Any] = json.loads((VECTORS / "canonical.json").read_text("utf-8"))
FINGERPRINTS: dict[str, Any] = json.loads((VECTORS / "fingerprints.json").read_text("utf-8"))
CASES = {case["name"]: case for case in CANONICAL["cases"]}


@pytest.mark.parametrize("case", CANONICAL["cases"], ids=lambda c: c["name"])
def test_engine_reproduces_canonical_vector(case: dict[str, Any]) -> None:
    value = parse_json(case["input"])
    assert canonical_bytes(value).decode("utf-8") == case["canonical"]
    assert content_hash(value) == case["sha256"]


@pytest.mark.parametrize("case", CANONICAL["cases"], ids=lambda c: c["name"])
def test_canonical_vector_is_consistent(case: dict[str, Any]) -> None:
    """Checks that need no canonicalizer: the hash is of the stored text, the text means the
    same JSON as the input, and every object's keys are in UTF-16 code unit order."""
    canonical: str = case["canonical"]
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == case["sha256"]
    # Integers as floats: a canonical 999999999999999900000 is the input's 9.999999999999999e20.
    assert json.loads(canonical, parse_int=float) == json.loads(case["input"], parse_int=float)

    def keys_in_utf16_order(value: Any) -> None:
        if isinstance(value, dict):
            keys = list(value)
            assert keys == sorted(keys, key=lambda k: k.encode("utf-16-be"))
            for item in value.values():
                keys_in_utf16_order(item)
        elif isinstance(value, list):
            for item in value:
                keys_in_utf16_order(item)

    keys_in_utf16_order(json.loads(canonical, object_pairs_hook=dict))


def test_canonical_vectors_match_rfc8785_literally() -> None:
    """Outputs copied from RFC 8785 (3.2.2, 3.2.3, appendix B), not produced by any library."""
    assert CASES["rfc8785 3.2.2 example"]["canonical"] == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    order = list(json.loads(CASES["rfc8785 3.2.3 key order by utf-16 code units"]["canonical"]))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001F600", "\ufb33"]
    numbers = {
        "1e21 switches to exponent": [
            "1e+21", "100000000000000000000", "999999999999999900000", "1e+21", "1e-7"
        ],
        "1e-7 switches to exponent": ["1e-7", "0.000001", "0.000001", "1e-7"],
        "negative zero": ["0", "0", "0", "0"],
        "float extremes": ["5e-324", "1.7976931348623157e+308", "2.2250738585072014e-308"],
        "float rounding to shortest": ["333333333.3333332", "9.999999999999997e+22", "1e+23"],
    }
    for name, spelled in numbers.items():
        assert CASES[name]["canonical"] == "[" + ",".join(spelled) + "]", name
    assert CASES["control chars and escapes"]["canonical"] == (
        '"\\u0000\\u0001\\u001f\\b\\f\\n\\r\\t \u007f \u2028\u2029 / \\" \\\\"'
    )


@pytest.mark.parametrize("case", CANONICAL["rejected"], ids=lambda c: c["name"])
def test_engine_refuses_integers_outside_the_safe_domain(case: dict[str, Any]) -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        content_hash(parse_json(case["input"]))


def oracle(value: Any) -> str:
    """The formula of decision 0003 written out: hashlib over rfc8785, no engine code."""
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def test_engine_reproduces_fingerprint_vectors() -> None:
    assert FINGERPRINTS["engine_version"] == ENGINE_VERSION
    for item in FINGERPRINTS["artifact_hashes"]:
        assert artifact_hash(item["payload"]) == item["hash"] == oracle(item["payload"])
    for item in FINGERPRINTS["definition_hashes"]:
        assert definition_hash(item["step_ids"]) == item["hash"] == oracle(item["step_ids"])
    for case in FINGERPRINTS["step_fingerprints"]:
        got = step_fingerprint(
            step_id=case["step_id"], input_hashes=case["input_hashes"], params=case["params"],
            definition_hash=case["definition_hash"], engine_version=case["engine_version"],
        )
        fields = {
            "engine_version": case["engine_version"],
            "step_id": case["step_id"],
            "inputs": sorted(case["input_hashes"]),
            "params": case["params"],
            "definition_hash": case["definition_hash"],
        }
        assert got == case["fingerprint"] == oracle(fields), case["name"]
    for item in FINGERPRINTS["flow_fingerprints"]:
        steps = item["step_fingerprints"]
        assert flow_fingerprint(steps) == item["fingerprint"] == oracle(steps)


def test_fingerprint_vectors_agree_with_the_pinned_values_of_decision_0003() -> None:
    pinned_definition = "d5280a7821eac21594d64cd2dd5f891756bb869e672315ff51b7e6818b4ce974"
    hashes = {json.dumps(i["payload"]): i["hash"] for i in FINGERPRINTS["artifact_hashes"]}
    assert hashes["null"] == "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
    assert hashes['{"text": "Hola"}'] == (
        "f7e6e665bfa96f0615a0b052717af4584d88c2d1c03ed2046c4e44b8520603a6"
    )
    assert FINGERPRINTS["definition_hashes"][0] == {
        "step_ids": ["seed", "split", "print_and_count"], "hash": pinned_definition
    }
    # The params cases really hold 1.0 and -0.0, so a client's number handling is tested.
    params = FINGERPRINTS["step_fingerprints"][2]["params"]
    assert isinstance(params["n"], float)
    assert math.copysign(1, FINGERPRINTS["step_fingerprints"][3]["params"]["x"]) == -1
