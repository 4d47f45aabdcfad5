"""Artifact payloads of one flow, fetched from the store once and checked against their hash."""

from __future__ import annotations

from collections.abc import Sequence

from engine_service.steps.context import ArtifactValue
from flowledger.canonical import JsonValue, content_hash, parse_json
from flowledger.errors import InternalError
from flowledger_core.ports import EventStore

MAX_HASHES_PER_CALL = 1000  # GetArtifactsRequest.hashes


class ArtifactCache:
    def __init__(self, store: EventStore, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._payloads: dict[str, JsonValue] = {}

    def put(self, artifact_hash: str, payload: JsonValue) -> None:
        self._payloads[artifact_hash] = payload

    async def values(self, hashes: Sequence[str]) -> tuple[ArtifactValue, ...]:
        """The artifacts, in the order asked. InternalError when one is missing from the store
        or its payload no longer hashes to its hash: a step must never run on altered data."""
        missing = sorted({h for h in hashes if h not in self._payloads})
        for start in range(0, len(missing), MAX_HASHES_PER_CALL):
            batch = missing[start : start + MAX_HASHES_PER_CALL]
            lookup = await self._store.get_artifacts(self._namespace, batch)
            if lookup.missing:
                raise InternalError(
                    f"artifact {lookup.missing[0]} is referenced by the flow's log but missing "
                    "from the store",
                    reason="ARTIFACT_MISSING",
                    metadata={"artifact_hash": lookup.missing[0]},
                )
            for artifact in lookup.found:
                payload = parse_json(artifact.payload_json)
                if content_hash(payload) != artifact.hash:
                    raise InternalError(
                        f"artifact {artifact.hash} was altered: its payload hashes differently",
                        reason="ARTIFACT_CORRUPT",
                        metadata={"artifact_hash": artifact.hash},
                    )
                self._payloads[artifact.hash] = payload
        return tuple(ArtifactValue(h, self._payloads[h]) for h in hashes)
