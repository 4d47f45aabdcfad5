"""Fingerprints: what proves which steps ran, on which inputs, with which parameters.

Every formula hashes RFC 8785 canonical JSON with sha256 (lower-case hex), so any language with a
JCS library reproduces them. The exact formulas are in docs/decisions/0003-fingerprints.md; a
change to any of them must bump :data:`ENGINE_VERSION`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from flowledger.canonical import JsonValue, canonical_bytes, content_hash

ENGINE_VERSION = "flowledger-fp/1"
"""The fingerprint scheme, hashed into every step fingerprint.

Deliberately not the package version: a release that does not change what is hashed must keep
fingerprints stable, and a change to the scheme must change every fingerprint.
"""


def _sha256_canonical(value: JsonValue) -> str:
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def artifact_hash(payload: JsonValue) -> str:
    """The content hash of an artifact payload (sha256 of its canonical JSON)."""
    return content_hash(payload)


def definition_hash(step_ids: Iterable[str]) -> str:
    """sha256 of the canonical JSON array of the ordered step ids (and nothing else)."""
    return _sha256_canonical(list(step_ids))


def step_fingerprint(
    *,
    step_id: str,
    input_hashes: Iterable[str],
    params: Mapping[str, JsonValue],
    definition_hash: str,
    engine_version: str = ENGINE_VERSION,
) -> str:
    """sha256 of the canonical JSON object of the five fingerprint fields.

    Input hashes are sorted (duplicates kept): a step's fingerprint does not depend on the order
    in which its inputs were produced, only on which artifacts they are.
    """
    return _sha256_canonical(
        {
            "engine_version": engine_version,
            "step_id": step_id,
            "inputs": sorted(input_hashes),
            "params": dict(params),
            "definition_hash": definition_hash,
        }
    )


def failed_step_fingerprint(
    *,
    step_id: str,
    input_hashes: Iterable[str],
    params: Mapping[str, JsonValue],
    definition_hash: str,
    error_type: str,
    engine_version: str = ENGINE_VERSION,
) -> str:
    """The fingerprint of a continue_on_error step that failed for good (decision 0010): the
    step fingerprint's object plus ``"failed": {"error_type": ...}``. The reason text is left
    out: messages may carry addresses or timings that differ between equal runs."""
    return _sha256_canonical(
        {
            "engine_version": engine_version,
            "step_id": step_id,
            "inputs": sorted(input_hashes),
            "params": dict(params),
            "definition_hash": definition_hash,
            "failed": {"error_type": error_type},
        }
    )


def skipped_step_fingerprint(
    *,
    step_id: str,
    input_hashes: Iterable[str],
    params: Mapping[str, JsonValue],
    definition_hash: str,
    engine_version: str = ENGINE_VERSION,
) -> str:
    """The fingerprint of a step its ``when`` condition skipped (decision 0010): the step
    fingerprint's object plus ``"skipped": true``."""
    return _sha256_canonical(
        {
            "engine_version": engine_version,
            "step_id": step_id,
            "inputs": sorted(input_hashes),
            "params": dict(params),
            "definition_hash": definition_hash,
            "skipped": True,
        }
    )


def flow_fingerprint(step_fingerprints: Iterable[str]) -> str:
    """sha256 of the canonical JSON array of the step fingerprints, in step order."""
    return _sha256_canonical(list(step_fingerprints))
