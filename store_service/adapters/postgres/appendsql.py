"""A group-commit batch as one call of ``flowledger_append_batch`` (migrations 0003, 0004, 0010).

The function locks the batch's flows in flow-id order, checks each command in queue order
(namespace, command id, deletion, fencing token, expected version, ended flow, events-per-flow
limit: the same order as the memory store), writes the events, artifacts,
command rows and flow heads, notifies the feed and answers one row per command. On an autocommit
connection that is one statement, one round trip and one transaction per batch whatever its size;
its rows arrive once the commit is durable. Python only packs the arrays and names the outcomes.
Array parameters go in binary (``%b``): payload text is not escaped into array literals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowledger.errors import AlreadyExists, FlowledgerError, VersionConflict
from flowledger_core.domain import Append, AppendResult
from store_service.adapters.flow_limits import events_per_flow_exceeded, highest_start_version
from store_service.adapters.flow_rules import flow_ended
from store_service.adapters.lease_rules import lease_lost
from store_service.adapters.postgres.rows import flow_deleted, flow_not_found

# The function's array arguments, in order, as :func:`batch_params` packs them.
APPEND_ARGUMENTS = """
    %b::text[], %b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::timestamptz[],
    %b::text[], %b::bigint[], %b::int[], %b::bigint[],
    %b::int[], %b::int[], %b::text[], %b::text[],
    %b::int[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[]"""
APPEND_BATCH = f"""
SELECT outcome, first_version, last_version, seqs, current_version, used_by, artifacts_inserted
FROM flowledger_append_batch({APPEND_ARGUMENTS})
"""

# A result row: (outcome, first_version, last_version, seqs, current_version, used_by,
# artifacts_inserted); outcomes are documented in the migration.
Row = tuple[Any, ...]
ACCEPTED = "accepted"
REPEATS = frozenset({"same", "duplicate"})


def batch_params(cmds: list[Append], max_events: int) -> tuple[list[Any], ...]:
    """The function's arguments: per command, per event and per artifact arrays
    (``max_events``: the store's events-per-flow limit)."""
    c_ns: list[str] = []
    c_flow: list[str] = []
    c_expected: list[int] = []
    c_cmd: list[str] = []
    c_status: list[str | None] = []
    c_wake: list[datetime | None] = []
    c_queue: list[str | None] = []
    c_token: list[int] = []
    c_events: list[int] = []
    c_limit: list[int] = []
    e_cmd: list[int] = []
    e_off: list[int] = []
    e_type: list[str] = []
    e_payload: list[str] = []
    a_cmd: list[int] = []
    a_event: list[int] = []
    a_hash: list[str] = []
    a_kind: list[str] = []
    a_payload: list[str] = []
    a_meta: list[str | None] = []
    for i, c in enumerate(cmds, 1):
        c_ns.append(c.namespace)
        c_flow.append(c.flow_id)
        c_expected.append(c.expected_version)
        c_cmd.append(c.command_id)
        c_status.append(None if c.new_status is None else c.new_status.value)
        c_wake.append(c.wake_at)
        c_queue.append(c.task_queue)
        c_token.append(c.fencing_token)
        c_events.append(len(c.events))
        c_limit.append(highest_start_version(c, max_events))
        for n, ev in enumerate(c.events):
            e_cmd.append(i)
            e_off.append(n)
            e_type.append(ev.type.value)
            e_payload.append(ev.payload_json)
        for a in c.artifacts:
            a_cmd.append(i)
            a_event.append(a.event_index)
            a_hash.append(a.hash)
            a_kind.append(a.kind)
            a_payload.append(a.payload_json)
            a_meta.append(a.metadata_json)
    return (
        c_ns, c_flow, c_expected, c_cmd, c_status, c_wake, c_queue, c_token, c_events, c_limit,
        e_cmd, e_off, e_type, e_payload,
        a_cmd, a_event, a_hash, a_kind, a_payload, a_meta,
    )  # fmt: skip


def outcome(c: Append, row: Row, max_events: int) -> AppendResult | FlowledgerError:
    """The caller's answer for one command's row."""
    kind, first, last, seqs, current, used_by = row[:6]
    if kind == ACCEPTED:
        return AppendResult(first, last, tuple(seqs))
    if kind in REPEATS:
        return AppendResult(first, last, tuple(seqs), duplicate=True)
    if kind == "conflict":
        return VersionConflict(c.flow_id, c.expected_version, current)
    if kind == "not_found":
        return flow_not_found(c.namespace, c.flow_id)
    if kind == "deleted":
        return flow_deleted(c.flow_id)
    if kind == "ended":
        return flow_ended(c.flow_id, used_by)
    if kind == "too_many_events":
        return events_per_flow_exceeded(c, current, max_events)
    if kind == "lease_lost":
        return lease_lost(c.flow_id, c.fencing_token)
    if kind == "reused":
        return AlreadyExists(
            f"command id {c.command_id!r} was already used by a {used_by} of flow {c.flow_id}",
            reason="COMMAND_ID_REUSED",
            metadata={"flow_id": c.flow_id, "command_id": c.command_id},
        )
    raise AssertionError(f"flowledger_append_batch answered an unknown outcome {kind!r}")
