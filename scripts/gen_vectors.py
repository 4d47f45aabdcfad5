"""Writes tests/vectors/*.json, the cross-language vectors, from the Python engine's own functions.

Every client (Node today; Go and Java later) must reproduce these values; tests/test_vectors.py
checks that the engine still does and checks the values independently of it. Run
``.venv/bin/python scripts/gen_vectors.py`` only when adding cases: a changed value of an
existing case is a broken contract (decision 0003), not something to regenerate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engine_service.fingerprint import (
    ENGINE_VERSION,
    artifact_hash,
    definition_hash,
    flow_fingerprint,
    step_fingerprint,
)
from flowledger.canonical import canonical_bytes, parse_json

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"

# (name, JSON text). The input is JSON *text*: each language parses it with its own JSON parser,
# so number spellings (1E30, 4.50, -0) and escapes reach the canonicalizer as a client sees them.
CANONICAL_CASES: list[tuple[str, str]] = [
    ("rfc8785 3.2.2 example",
     '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
     ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
     ' "literals": [null, true, false]}'),
    ("rfc8785 3.2.3 key order by utf-16 code units",
     '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With'
     ' Dagesh", "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
     ' "\\u00f6": "Latin Small Letter O With Diaeresis"}'),
    ("astral char literal and escaped", '["\U0001F600", "\\ud834\\udd1e", "\U00010000"]'),
    ("astral key sorts before U+FFFF key", '{"\\uffff": 1, "\\ud800\\udc00": 2, "z": 3}'),
    ("control chars and escapes",
     '"\\u0000\\u0001\\u001f\\b\\f\\n\\r\\t \\u007f \\u2028\\u2029 \\/ \\" \\\\"'),
    ("non-ascii stays literal",
     '{"name": "Zo\\u00eb", "city": "K\\u00f8benhavn", "ja": "\u65e5\u672c"}'),
    ("1e21 switches to exponent", "[1e21, 1e20, 9.999999999999999e20, 1E+21, 1e-7]"),
    ("1e-7 switches to exponent", "[1e-7, 1e-6, 0.000001, 0.0000001]"),
    ("negative zero", "[-0, -0.0, 0, 0.0]"),
    ("decimal fractions", "[0.1, 0.2, 0.30000000000000004, 1.5, -2.25, 100.0]"),
    ("safe integer edges", "[9007199254740991, -9007199254740991, 4294967296, 1, -1]"),
    ("float extremes", "[5e-324, 1.7976931348623157e308, 2.2250738585072014e-308]"),
    ("float rounding to shortest", "[333333333.3333332, 9.999999999999997e22, 1e23]"),
    ("nested objects sorted at every level",
     '{"b": {"z": [3, {"y": 1, "x": 2}], "a": null}, "a": {"c": true, "b": false}, "": 0}'),
    ("empty containers", '{"a": [], "b": {}, "c": "", "d": [{}]}'),
    ("whitespace removed", ' {\n  "a" : [ 1 , 2 ] ,\n  "b" :\t"x"\n} '),
    ("null", "null"),
]

# Inputs the engine refuses (outside the I-JSON integer domain): hashing them must fail.
REJECTED_CASES: list[tuple[str, str]] = [
    ("integer 2^53", "9007199254740992"),
    ("integer -2^53", "[-9007199254740992]"),
    ("large integer in object", '{"n": 12345678901234567890}'),
]

H1 = artifact_hash(None)
H2 = artifact_hash({"text": "Hola"})
H3 = artifact_hash([1, 2, 3])


def canonical_vectors() -> dict[str, Any]:
    cases = []
    for name, text in CANONICAL_CASES:
        canonical = canonical_bytes(parse_json(text))
        cases.append({
            "name": name,
            "input": text,
            "canonical": canonical.decode("utf-8"),
            "sha256": hashlib.sha256(canonical).hexdigest(),
        })
    return {
        "description": "RFC 8785 canonical JSON and artifact hashes (sha256 hex of the canonical"
        " UTF-8 bytes). Parse `input` with the language's JSON parser, canonicalize, compare"
        " with `canonical` and `sha256`. `rejected` inputs must not hash. Written by"
        " scripts/gen_vectors.py from the Python engine; checked by tests/test_vectors.py.",
        "cases": cases,
        "rejected": [{"name": n, "input": t} for n, t in REJECTED_CASES],
    }


def fingerprint_vectors() -> dict[str, Any]:
    step_cases: list[dict[str, Any]] = [
        {"name": "source step of a null input", "step_id": "seed", "input_hashes": [H1],
         "params": {"text": "Hola"}},
        {"name": "inputs are sorted, duplicates kept", "step_id": "split",
         "input_hashes": [H3, H1, H3], "params": {}},
        {"name": "params are canonicalized inside (1.0 == 1)", "step_id": "count",
         "input_hashes": [H2],
         "params": {"n": 1.0, "label": "\u00e9\U0001F600", "opts": {"b": [], "a": None}}},
        {"name": "no inputs", "step_id": "start", "input_hashes": [], "params": {"x": -0.0}},
        {"name": "other scheme version", "step_id": "seed", "input_hashes": [H1],
         "params": {"text": "Hola"}, "engine_version": "flowledger-fp/0"},
    ]
    step_ids = ["seed", "split", "print_and_count"]
    dhash = definition_hash(step_ids)
    for case in step_cases:
        case["definition_hash"] = dhash
        case.setdefault("engine_version", ENGINE_VERSION)
        case["fingerprint"] = step_fingerprint(
            step_id=case["step_id"], input_hashes=case["input_hashes"], params=case["params"],
            definition_hash=dhash, engine_version=case["engine_version"],
        )
    flow_steps = [c["fingerprint"] for c in step_cases[:3]]
    return {
        "description": "Fingerprint formulas of docs/decisions/0003-fingerprints.md. Written by"
        " scripts/gen_vectors.py from engine_service.fingerprint; checked by"
        " tests/test_vectors.py.",
        "engine_version": ENGINE_VERSION,
        "artifact_hashes": [
            {"payload": p, "hash": artifact_hash(p)}
            for p in (None, {"text": "Hola"}, [1, 2, 3], {"b": 1.0, "a": "\u20ac"})
        ],
        "definition_hashes": [
            {"step_ids": ids, "hash": definition_hash(ids)}
            for ids in (step_ids, ["split", "seed", "print_and_count"], ["only"], [])
        ],
        "step_fingerprints": step_cases,
        "flow_fingerprints": [
            {"step_fingerprints": flow_steps, "fingerprint": flow_fingerprint(flow_steps)},
            {"step_fingerprints": [], "fingerprint": flow_fingerprint([])},
        ],
    }


def write(name: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    (VECTORS / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    VECTORS.mkdir(parents=True, exist_ok=True)
    write("canonical.json", canonical_vectors())
    write("fingerprints.json", fingerprint_vectors())
