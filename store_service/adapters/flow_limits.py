"""The events-per-flow limit, applied alike by both backends (pure: no storage).

A flow's version counts every event of its log (inherited from a parent, kept by a prune, its
own), and an append is accepted only at ``expected_version == version``. So whether an append
would take the log past the limit is known from the command alone: one that would can never be
accepted, and is refused before anything is looked up or locked, in both backends the same way.

The append that ends the flow (status COMPLETED, FAILED or CANCELLED) may pass the limit once,
from a log still within it: an engine that was refused can still record why the flow failed.
Every later append is past the limit, so the log stays bounded by the limit plus one append.
"""

from __future__ import annotations

from flowledger.errors import ResourceExhausted
from store_service.domain import Append

DEFAULT_MAX_EVENTS_PER_FLOW = 100_000


def check_events_per_flow(cmd: Append, max_events: int) -> None:
    """ResourceExhausted (reason EVENTS_PER_FLOW_EXCEEDED) when ``cmd`` would pass the limit."""
    total = cmd.expected_version + len(cmd.events)
    if total <= max_events:
        return
    ends_flow = cmd.new_status is not None and cmd.new_status.terminal
    if ends_flow and cmd.expected_version <= max_events:
        return
    raise ResourceExhausted(
        f"flow {cmd.flow_id} would hold {total} events; at most {max_events} are allowed "
        "(STORE_MAX_EVENTS_PER_FLOW). Only an append that ends the flow may go past it",
        reason="EVENTS_PER_FLOW_EXCEEDED",
        metadata={
            "flow_id": cmd.flow_id,
            "limit": "max_events_per_flow",
            "max": str(max_events),
        },
    )
