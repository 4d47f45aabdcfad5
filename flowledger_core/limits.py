"""The request limits of the store's contract, shared by the store (which enforces its configured
values) and the engine (which checks requests against them before it calls the store).

Also the contract's fixed bounds (task queue names), so that both sides quote one definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_EVENTS_PER_FLOW",
    "ID_LENGTH_CEILING",
    "MAX_TASK_QUEUES_PER_CLAIM",
    "MAX_TASK_QUEUE_LENGTH",
    "MESSAGE_OVERHEAD",
    "MIB",
    "TASK_QUEUE",
    "Limits",
    "LimitsError",
]

MIB = 1024 * 1024

DEFAULT_MAX_EVENTS_PER_FLOW = 100_000

# Hard ceilings from the schema and the contract: configurable limits may be lower, never higher.
ID_LENGTH_CEILING = 128  # CHECK (length(command_id) BETWEEN 1 AND 128), namespace likewise
# Room for everything in a ReadEvents/AppendEvents message besides one payload.
MESSAGE_OVERHEAD = 64 * 1024

MAX_TASK_QUEUE_LENGTH = 128
MAX_TASK_QUEUES_PER_CLAIM = 1000
# The contract's queue names (store.proto); the flows table checks the same pattern.
TASK_QUEUE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


class LimitsError(ValueError):
    """Limits that contradict each other; ``variable`` names the setting to change."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class Limits:
    """Request limits. Sizes are UTF-8 bytes; a request past one is RESOURCE_EXHAUSTED."""

    max_payload_bytes: int = 2 * MIB
    max_message_bytes: int = 4 * MIB
    max_events_per_append: int = 1000
    max_artifacts_per_append: int = 1000
    # A flow's log (its version: inherited, kept and own events) may not grow past this; an
    # append that would is refused, except one that ends the flow (docs/security.md).
    max_events_per_flow: int = DEFAULT_MAX_EVENTS_PER_FLOW
    max_id_length: int = ID_LENGTH_CEILING
    # Deeper JSON is refused: Python's parser and the RFC 8785 encoder recurse per level.
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        # Cross-field rules; the store's settings have already checked each variable on its own.
        if self.max_payload_bytes + MESSAGE_OVERHEAD > self.max_message_bytes:
            raise LimitsError(
                "STORE_MAX_PAYLOAD_BYTES",
                f"{self.max_payload_bytes} leaves less than {MESSAGE_OVERHEAD} bytes of "
                f"STORE_MAX_MESSAGE_BYTES ({self.max_message_bytes}) for the rest of a message",
            )
        if not 1 <= self.max_id_length <= ID_LENGTH_CEILING:
            raise LimitsError("STORE_MAX_ID_LENGTH", f"must be 1..{ID_LENGTH_CEILING}")
