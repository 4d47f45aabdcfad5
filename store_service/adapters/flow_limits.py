"""The events-per-flow limit, applied alike by both backends (pure: no storage).

A flow's version counts every event of its log (inherited from a parent, kept by a prune, its
own). An append is judged against the limit only once it is known to apply to the flow as the
caller saw it (found, not a repeat, not deleted, its lease held, ``expected_version`` the flow's
version, the flow not ended): a caller that claims a version the flow is not at gets the
conflict and the current version, whatever version it claimed. Both backends make the checks
in that order; in Postgres ``flowledger_append_batch`` (migration 0010) compares the flow's
version with :func:`highest_start_version`, which Python computes from the command alone.

The append that ends the flow may pass the limit by its ending event only: one FlowCompleted,
FlowFailed or FlowCancelled with the matching terminal status, from a log still within the limit.
So a flow at its limit can always end (an engine that was refused records
``FlowFailed{EventsPerFlowExceeded}``, a cancel records FlowCancelled), and a log never holds
more than the limit plus that one event.
"""

from __future__ import annotations

from flowledger.errors import ResourceExhausted
from flowledger_core.domain import Append, EventType, FlowStatus

# The event that ends a flow, per terminal status.
ENDING_EVENTS = {
    FlowStatus.COMPLETED: EventType.FLOW_COMPLETED,
    FlowStatus.FAILED: EventType.FLOW_FAILED,
    FlowStatus.CANCELLED: EventType.FLOW_CANCELLED,
}


def only_ends_flow(cmd: Append) -> bool:
    """Whether ``cmd`` is just the flow's ending: its terminal status and that status's event."""
    if cmd.new_status is None or len(cmd.events) != 1:
        return False
    return ENDING_EVENTS.get(cmd.new_status) is cmd.events[0].type


def highest_start_version(cmd: Append, max_events: int) -> int:
    """The highest version the flow may be at for ``cmd`` to be within the limit (negative:
    never)."""
    if only_ends_flow(cmd):
        return max_events
    return max_events - len(cmd.events)


def check_events_per_flow(cmd: Append, version: int, max_events: int) -> None:
    """ResourceExhausted when ``cmd`` applied at ``version`` (the flow's; checked equal to the
    expected one) would pass the limit."""
    if version > highest_start_version(cmd, max_events):
        raise events_per_flow_exceeded(cmd, version, max_events)


def events_per_flow_exceeded(cmd: Append, version: int, max_events: int) -> ResourceExhausted:
    """The refusal of ``cmd`` at ``version`` (reason EVENTS_PER_FLOW_EXCEEDED)."""
    total = version + len(cmd.events)
    return ResourceExhausted(
        f"flow {cmd.flow_id} would hold {total} events; at most {max_events} are allowed "
        "(STORE_MAX_EVENTS_PER_FLOW). Past it only the flow's ending may be appended: its "
        "terminal status with its one FlowCompleted, FlowFailed or FlowCancelled event",
        reason="EVENTS_PER_FLOW_EXCEEDED",
        metadata={
            "flow_id": cmd.flow_id,
            "limit": "max_events_per_flow",
            "max": str(max_events),
            "current_version": str(version),
        },
    )
