"""Helpers of the engine tests: an independent fingerprint check, a store wrapper for faults."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import rfc8785

from engine_service.run.flow_run import FlowRun
from flowledger.canonical import parse_json
from flowledger_core.domain import (
    Append,
    AppendResult,
    ArtifactLookup,
    ClaimRequest,
    CreatedFlow,
    DefinitionPage,
    DefinitionTransitionCommand,
    EventType,
    FeedEvent,
    Flow,
    FlowFilter,
    FlowLease,
    FlowPage,
    NewBranch,
    NewDefinitionVersion,
    NewFlow,
    Page,
    Prune,
    Snapshot,
    StepCounts,
    StoredDefinition,
    StoredEvent,
)
from flowledger_core.ports import EventStore


def oracle(value: Any) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


async def verify_independently(store: EventStore, run: FlowRun) -> list[str]:
    """Recompute every fingerprint of a completed run from its stored log and artifacts with
    hashlib and rfc8785 only (the formulas of docs/decisions/0003-fingerprints.md, params as
    replaced by PropertyPreferenceAssigned events, decision 0007); returns the step
    fingerprints. Independent of the engine's own hashing code."""
    payloads = [(e.stored.type, parse_json(e.stored.payload_json)) for e in await run.events()]
    init = payloads[0][1]
    assert payloads[0][0] is EventType.FLOW_INITIALIZED
    step_ids = [s["id"] for s in init["steps"]]
    assert init["definition_hash"] == oracle(step_ids)
    previous_outputs = [init["input_hash"]] + ([init["variables_hash"]] if init.get(
        "variables_hash") else [])  # fmt: skip
    params = {s["id"]: s["config"] for s in init["steps"]}
    types = [s["type"] for s in init["steps"]]
    fingerprints: list[str] = []
    fired: set[int] = set()  # steps whose timer fired (a signal step then consumes none)
    for etype, p in payloads:
        if etype is EventType.PROPERTY_PREFERENCE_ASSIGNED:
            params.update(p["params"])
        if etype is EventType.TIMER_FIRED:
            fired.add(p["index"])
        if etype is not EventType.STEP_FINISHED:
            continue
        index = p["index"]
        inputs = list(previous_outputs)
        if types[index] == "signal" and index not in fired:
            inputs += p["output_hashes"]  # the consumed signal's payload (decision 0003)
        assert p["input_hashes"] == inputs
        expected = oracle(
            {
                "engine_version": "flowledger-fp/1",
                "step_id": step_ids[index],
                "inputs": sorted(inputs),
                "params": params[step_ids[index]],
                "definition_hash": oracle(step_ids),
            }
        )
        assert p["fingerprint"] == expected
        lookup = await store.get_artifacts(run.namespace, sorted(set(p["output_hashes"])))
        assert not lookup.missing
        for artifact in lookup.found:
            assert oracle(parse_json(artifact.payload_json)) == artifact.hash
        fingerprints.append(expected)
        previous_outputs = list(p["output_hashes"])
    completed = [p for t, p in payloads if t is EventType.FLOW_COMPLETED]
    assert completed == [{"kind": "FlowCompleted", "flow_fingerprint": oracle(fingerprints)}]
    return fingerprints


def normalized(events: Sequence[StoredEvent]) -> list[tuple[int, str, Any]]:
    """Events without ids and timestamps: (version, type, parsed payload)."""
    return [(e.version, e.type.value, parse_json(e.payload_json)) for e in events]


AppendFn = Callable[[Append], Awaitable[AppendResult]]
AppendHook = Callable[[Append, AppendFn], Awaitable[AppendResult]]


class DelegatingStore:
    """An EventStore that forwards to another, with a hook around ``append`` for injecting
    faults (a lost response, a concurrent writer) into either real backend."""

    def __init__(self, inner: EventStore, on_append: AppendHook | None = None) -> None:
        self.inner = inner
        self.on_append = on_append

    async def append(self, cmd: Append) -> AppendResult:
        if self.on_append is None:
            return await self.inner.append(cmd)
        return await self.on_append(cmd, self.inner.append)

    async def create_flow(self, new: NewFlow) -> tuple[Flow, bool]:
        return await self.inner.create_flow(new)

    async def create_flow_with(
        self,
        new: NewFlow,
        *,
        lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:
        return await self.inner.create_flow_with(new, lease=lease, initial=initial)

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        return await self.inner.get_flow(namespace, flow_id, include_deleted)

    async def list_flows(self, flt: FlowFilter, page: Page) -> FlowPage:
        return await self.inner.list_flows(flt, page)

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        return self.inner.read_events(namespace, flow_id, after_version, to_version, chunk_size)

    async def count_steps(self, namespace: str, flow_id: str) -> StepCounts:
        return await self.inner.count_steps(namespace, flow_id)

    def subscribe(
        self,
        namespace: str,
        after_cursor: str = "",
        types: Sequence[EventType] = (),
        chunk_size: int = 500,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        return self.inner.subscribe(namespace, after_cursor, types, chunk_size)

    async def get_artifacts(self, namespace: str, hashes: Sequence[str]) -> ArtifactLookup:
        return await self.inner.get_artifacts(namespace, hashes)

    async def create_branch(self, new: NewBranch) -> tuple[Flow, bool]:
        return await self.inner.create_branch(new)

    async def delete_branch(
        self, namespace: str, flow_id: str, deleted_by: str = "", reason: str = ""
    ) -> Flow:
        return await self.inner.delete_branch(namespace, flow_id, deleted_by, reason)

    async def prune(self, cmd: Prune) -> tuple[Flow, bool]:
        return await self.inner.prune(cmd)

    async def save_snapshot(
        self, namespace: str, flow_id: str, version: int, state_json: str
    ) -> None:
        await self.inner.save_snapshot(namespace, flow_id, version, state_json)

    async def load_snapshot(
        self, namespace: str, flow_id: str, max_version: int = 0
    ) -> Snapshot | None:
        return await self.inner.load_snapshot(namespace, flow_id, max_version)

    async def put_definition_version(
        self, new: NewDefinitionVersion
    ) -> tuple[StoredDefinition, bool]:
        return await self.inner.put_definition_version(new)

    async def get_definition_version(
        self, namespace: str, name: str, version: int = 0
    ) -> StoredDefinition:
        return await self.inner.get_definition_version(namespace, name, version)

    async def list_definition_versions(
        self, namespace: str, name: str | None, page: Page
    ) -> DefinitionPage:
        return await self.inner.list_definition_versions(namespace, name, page)

    async def transition_definition_version(
        self, cmd: DefinitionTransitionCommand
    ) -> StoredDefinition:
        return await self.inner.transition_definition_version(cmd)

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        return await self.inner.claim_flows(req)

    async def renew_lease(
        self, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
    ) -> FlowLease:
        return await self.inner.renew_lease(namespace, flow_id, owner, fencing_token, lease_ms)

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        return await self.inner.release_lease(namespace, flow_id, fencing_token)

    async def close(self) -> None:
        """The inner store belongs to its fixture, which closes it."""
