"""Deterministic identifiers: flow ids from idempotency keys, command ids of appends.

Both are pure functions of what they identify, so a retried or repeated request produces the
same id and the store answers it instead of applying it twice.
"""

from __future__ import annotations

import uuid

# Fixed namespace of flowledger's UUIDv5 flow ids (uuid5(NAMESPACE_URL, "https://flowledger.dev/flow")).
FLOW_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://flowledger.dev/flow")


def flow_id_for_key(namespace: str, idempotency_key: str) -> str:
    """The flow id that ``idempotency_key`` always maps to within ``namespace`` (UUIDv5)."""
    # A separator that cannot occur in a namespace keeps ("a", "b:c") and ("a:b", "c") apart.
    return str(uuid.uuid5(FLOW_ID_NAMESPACE, f"{namespace}\n{idempotency_key}"))


def command_id(flow_id: str, generation: int, index: int, attempt: int, kind: str) -> str:
    """``<flow>:g<generation>:s<step index>:a<attempt>:<kind>`` (≤ 128 characters of
    [A-Za-z0-9.:-]).

    The generation is part of it because the store remembers command ids across prunes: a step
    re-run after its log was cut must not be answered with the pruned run's result.
    """
    return f"{flow_id}:g{generation}:s{index}:a{attempt}:{kind}"


def init_command_id(flow_id: str, generation: int) -> str:
    return f"{flow_id}:g{generation}:init"


def branch_command_id(flow_id: str, generation: int) -> str:
    """The append of a branch's params assignment, its first own event."""
    return f"{flow_id}:g{generation}:branch"
