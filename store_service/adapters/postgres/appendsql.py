"""The statements of a group-commit batch and the per-command decision between them.

A batch costs the same few round trips whatever its size: lock the flows and look up the
command ids (one pipeline), decide in Python, then write everything with one statement.
Array parameters go in binary (``%b``): payload text is not escaped into array literals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowledger.errors import AlreadyExists, FailedPrecondition, FlowledgerError, VersionConflict
from store_service.adapters.postgres.rows import flow_deleted, flow_not_found
from store_service.domain import Append, AppendResult

# Sorted by flow_id so that concurrent batches lock rows in one order and cannot deadlock.
LOCK_FLOWS = """
SELECT flow_id::text, namespace, deleted_at IS NOT NULL, version, generation, lease_token,
       coalesce(lease_expires_at > now(), false)
FROM flows WHERE flow_id = ANY(%b::uuid[]) ORDER BY flow_id FOR UPDATE
"""

# Runs after LOCK_FLOWS as its own statement: under READ COMMITTED it then sees every command
# committed by a writer we waited for.
FIND_COMMANDS = """
SELECT c.flow_id::text, c.command_id, c.kind, c.first_version, c.last_version, c.seqs
FROM flow_commands c
JOIN unnest(%b::uuid[], %b::text[]) AS k(f, id) ON c.flow_id = k.f AND c.command_id = k.id
"""

# Artifacts are inserted in hash order: two batches offering the same new hashes then wait for
# each other in one order instead of deadlocking. Results are matched by (flow_id, version).
WRITE = """
WITH ev AS (
    INSERT INTO event_log (flow_id, generation, version, event_type, payload, command_id)
    SELECT f, g, v, t, p::jsonb, c
    FROM unnest(%(ef)b::uuid[], %(eg)b::bigint[], %(ev)b::bigint[], %(et)b::text[],
                %(ep)b::text[], %(ec)b::text[]) AS x(f, g, v, t, p, c)
    RETURNING seq, flow_id, version
), art AS (
    INSERT INTO workflow_step_artifacts (artifact_hash, kind, payload, metadata, produced_in_seq)
    SELECT a.h, a.k, a.p::jsonb, a.m::jsonb, ev.seq
    FROM unnest(%(ah)b::text[], %(ak)b::text[], %(ap)b::text[], %(am)b::text[], %(af)b::uuid[],
                %(av)b::bigint[]) AS a(h, k, p, m, f, v)
    JOIN ev ON ev.flow_id = a.f AND ev.version = a.v
    ORDER BY a.h
    ON CONFLICT (artifact_hash) DO NOTHING
    RETURNING 1
), cmd AS (
    INSERT INTO flow_commands (flow_id, command_id, kind, first_version, last_version, seqs)
    SELECT c.f, c.id, 'append', c.lo, c.hi,
           ARRAY(SELECT ev.seq FROM ev
                 WHERE ev.flow_id = c.f AND ev.version BETWEEN c.lo AND c.hi ORDER BY ev.version)
    FROM unnest(%(cf)b::uuid[], %(ci)b::text[], %(clo)b::bigint[], %(chi)b::bigint[])
         AS c(f, id, lo, hi)
    RETURNING 1
), upd AS (
    UPDATE flows SET version = u.v, status = COALESCE(u.s, flows.status), updated_at = now()
    FROM unnest(%(uf)b::uuid[], %(uv)b::bigint[], %(us)b::text[]) AS u(f, v, s)
    WHERE flows.flow_id = u.f
    RETURNING 1
)
SELECT ev.seq, ev.flow_id::text, ev.version, (SELECT count(*) FROM art) FROM ev
"""

NOTIFY = "SELECT pg_notify('flowledger_events', '')"


@dataclass
class FlowState:
    """A locked flow row, updated in memory as the batch's commands are accepted."""

    namespace: str
    deleted: bool
    version: int
    generation: int
    lease_token: int
    lease_live: bool
    status: str | None = None  # set when a command of the batch changes it
    touched: bool = False


@dataclass(frozen=True)
class Accepted:
    flow_id: str
    first_version: int
    last_version: int
    generation: int


@dataclass(frozen=True)
class SameAs:
    """A repeat, within one batch, of an accepted command: answered with its result."""

    index: int


Outcome = AppendResult | FlowledgerError | Accepted | SameAs


@dataclass
class Decision:
    outcomes: list[Outcome]
    flows: dict[str, FlowState]
    conflicts: int = 0
    duplicates: int = 0
    params: dict[str, list[Any]] = field(default_factory=dict)
    artifacts_offered: int = 0


def flow_states(rows: list[tuple[Any, ...]]) -> dict[str, FlowState]:
    return {r[0]: FlowState(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}


def stored_results(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], AppendResult | str]:
    """Stored commands by (flow_id, command_id): the append result, or the kind of another one."""
    out: dict[tuple[str, str], AppendResult | str] = {}
    for flow_id, command_id, kind, first, last, seqs in rows:
        out[(flow_id, command_id)] = (
            AppendResult(first, last, tuple(seqs), duplicate=True) if kind == "append" else kind
        )
    return out


def decide(
    cmds: list[Append],
    flows: dict[str, FlowState],
    stored: dict[tuple[str, str], AppendResult | str],
) -> Decision:
    """Each command's fate, in queue order, each seeing the effect of the ones before it."""
    d = Decision(outcomes=[], flows=flows)
    accepted: dict[tuple[str, str], int] = {}
    for i, c in enumerate(cmds):
        d.outcomes.append(_decide_one(c, flows.get(c.flow_id), stored, accepted, d))
        if isinstance(d.outcomes[-1], Accepted):
            accepted[(c.flow_id, c.command_id)] = i
    d.params = _write_params(cmds, d)
    return d


def _decide_one(
    c: Append,
    st: FlowState | None,
    stored: dict[tuple[str, str], AppendResult | str],
    accepted: dict[tuple[str, str], int],
    d: Decision,
) -> Outcome:
    if st is None or st.namespace != c.namespace:
        return flow_not_found(c.namespace, c.flow_id)
    key = (c.flow_id, c.command_id)
    # A repeat answers the first result even if the flow moved on (or was deleted) since.
    if key in stored:
        previous = stored[key]
        if isinstance(previous, str):
            return AlreadyExists(
                f"command id {c.command_id!r} was already used by a {previous} of flow {c.flow_id}",
                reason="COMMAND_ID_REUSED",
                metadata={"flow_id": c.flow_id, "command_id": c.command_id},
            )
        d.duplicates += 1
        return previous
    if key in accepted:
        d.duplicates += 1
        return SameAs(accepted[key])
    if st.deleted:
        return flow_deleted(c.flow_id)
    if c.fencing_token != 0 and (c.fencing_token != st.lease_token or not st.lease_live):
        return FailedPrecondition(
            f"the lease of flow {c.flow_id} with fencing token {c.fencing_token} is lost "
            "(expired, released or taken over): stop working on this flow",
            reason="LEASE_LOST",
            metadata={"flow_id": c.flow_id, "fencing_token": str(c.fencing_token)},
        )
    if c.expected_version != st.version:
        d.conflicts += 1
        return VersionConflict(c.flow_id, c.expected_version, st.version)
    first = st.version + 1
    st.version += len(c.events)
    st.touched = True
    if c.new_status is not None:
        st.status = c.new_status.value
    return Accepted(c.flow_id, first, st.version, st.generation)


def _write_params(cmds: list[Append], d: Decision) -> dict[str, list[Any]]:
    p: dict[str, list[Any]] = {k: [] for k in _PARAM_KEYS}
    seen_hashes: set[str] = set()
    for c, out in zip(cmds, d.outcomes, strict=True):
        if not isinstance(out, Accepted):
            continue
        for n, ev in enumerate(c.events):
            p["ef"].append(c.flow_id)
            p["eg"].append(out.generation)
            p["ev"].append(out.first_version + n)
            p["et"].append(ev.type.value)
            p["ep"].append(ev.payload_json)
            p["ec"].append(c.command_id)
        for a in c.artifacts:
            d.artifacts_offered += 1
            if a.hash in seen_hashes:
                continue  # the first command of the batch that offers it produced it
            seen_hashes.add(a.hash)
            p["ah"].append(a.hash)
            p["ak"].append(a.kind)
            p["ap"].append(a.payload_json)
            p["am"].append(a.metadata_json)
            p["af"].append(c.flow_id)
            p["av"].append(out.first_version + a.event_index)
        p["cf"].append(c.flow_id)
        p["ci"].append(c.command_id)
        p["clo"].append(out.first_version)
        p["chi"].append(out.last_version)
    for flow_id, st in d.flows.items():
        if st.touched:
            p["uf"].append(flow_id)
            p["uv"].append(st.version)
            p["us"].append(st.status)
    return p


_PARAM_KEYS = (
    "ef", "eg", "ev", "et", "ep", "ec",
    "ah", "ak", "ap", "am", "af", "av",
    "cf", "ci", "clo", "chi",
    "uf", "uv", "us",
)  # fmt: skip
