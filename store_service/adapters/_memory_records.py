"""The in-memory store's per-flow state, laid out like the schema (generations, commands,
snapshots), and the reads and checks over it that need no lock of their own."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from flowledger.errors import AlreadyExists, FailedPrecondition
from flowledger_core.domain import Append, AppendResult, Flow, Snapshot, StoredEvent
from store_service.adapters._memory_support import appended
from store_service.adapters.lease_rules import lease_lost


@dataclass
class Generation:
    """Events with version > base_version; versions <= base_version come from ``inherit``
    (the parent's generation for a branch, the previous generation after a prune)."""

    base_version: int
    inherit: tuple[str, int] | None
    events: list[StoredEvent] = field(default_factory=list)


@dataclass
class Record:
    flow: Flow
    generations: list[Generation]
    # When the flow entered its status (flows.status_since): the claims' order.
    status_since: datetime
    # command_id -> (kind, first result), kind "append" or "prune" as in flow_commands.
    commands: dict[str, tuple[str, AppendResult]] = field(default_factory=dict)
    # (generation, version) -> snapshot, as the snapshots table's key.
    snapshots: dict[tuple[int, int], Snapshot] = field(default_factory=dict)
    # The lease (flows.lease_owner, lease_expires_at); the token is flow.lease_token. Expiry is
    # decided on the monotonic clock; ``lease_expires_at`` is its wall-clock reading for callers.
    lease_owner: str | None = None
    lease_deadline: float | None = None
    lease_expires_at: datetime | None = None

    def repeat(self, command_id: str, kind: str) -> AppendResult | None:
        """The first result of a repeated command (even if the flow moved on or was deleted)."""
        if command_id not in self.commands:
            return None
        first_kind, result = self.commands[command_id]
        if first_kind != kind:
            raise AlreadyExists(
                f"command id {command_id!r} was already used by a {first_kind} of flow "
                f"{self.flow.flow_id}",
                reason="COMMAND_ID_REUSED",
                metadata={"flow_id": self.flow.flow_id, "command_id": command_id},
            )
        return result

    def check_writable(self, fencing_token: int = 0) -> None:
        if self.flow.deleted:
            raise FailedPrecondition(
                f"flow {self.flow.flow_id} was deleted; it accepts no more writes",
                reason="FLOW_DELETED",
                metadata={"flow_id": self.flow.flow_id},
            )
        if fencing_token != 0 and not self.lease_held(fencing_token):
            raise lease_lost(self.flow.flow_id, fencing_token)

    def apply(self, cmd: Append, first_seq: int, now: datetime) -> list[StoredEvent]:
        """Append ``cmd`` (checked: not a repeat, writable, at the expected version) with seqs
        from ``first_seq``: its events, the flow's new head and status, the command's result.
        An append that ends the flow ends its lease too (it is never claimed again)."""
        flow = self.flow
        events = [
            StoredEvent(first_seq + i, flow.flow_id, flow.version + i + 1, e.type,
                        e.payload_json, now, cmd.command_id)
            for i, e in enumerate(cmd.events)
        ]  # fmt: skip
        self.generations[flow.generation].events.extend(events)
        self.flow = appended(flow, cmd, events[-1].version, now)
        if cmd.new_status is not None:
            self.status_since = now
        if self.flow.status.terminal:
            self.end_lease()
        result = AppendResult(events[0].version, events[-1].version, tuple(e.seq for e in events))
        self.commands[cmd.command_id] = ("append", result)
        return events

    def end_lease(self) -> None:
        """Clear the lease; the token stays on the flow: the next claim's token is larger."""
        self.lease_owner = self.lease_deadline = self.lease_expires_at = None

    def lease_live(self) -> bool:
        """Whether a lease is held now (the Postgres test: lease_expires_at > now())."""
        return self.lease_deadline is not None and self.lease_deadline > time.monotonic()

    def lease_held(self, fencing_token: int) -> bool:
        return fencing_token == self.flow.lease_token and self.lease_live()

    def latest_snapshot(self, max_version: int) -> Snapshot | None:
        """The highest snapshot <= max_version (0: any) that no later prune cut away."""
        best: tuple[int, int] | None = None
        for gen, version in self.snapshots:
            if max_version > 0 and version > max_version:
                continue
            # Valid while every later generation keeps the log at least up to this version.
            if any(g.base_version < version for g in self.generations[gen + 1 :]):
                continue
            if version > self.flow.version:
                continue
            if best is None or (version, gen) > (best[1], best[0]):
                best = (gen, version)
        return None if best is None else self.snapshots[best]


def read_log(
    records: Mapping[str, Record], flow_id: str, generation: int, after: int, upto: int
) -> list[StoredEvent]:
    """Versions (after, upto] of one generation's log, walking up its inheritance chain."""
    segments: list[tuple[Generation, int]] = []
    while upto > after:
        gen = records[flow_id].generations[generation]
        segments.append((gen, upto))
        if gen.inherit is None or gen.base_version <= after:
            break
        upto = min(upto, gen.base_version)
        flow_id, generation = gen.inherit
    out: list[StoredEvent] = []
    for gen, hi in reversed(segments):
        # A generation's events are contiguous from base_version + 1: slice by version.
        lo = max(after, gen.base_version)
        out.extend(gen.events[lo - gen.base_version : hi - gen.base_version])
    return out
