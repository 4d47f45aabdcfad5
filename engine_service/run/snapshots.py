"""Replay snapshots of a flow: load the latest usable one, save one every N events.

A snapshot only saves replay time; the log stays the truth. So a snapshot that cannot be read
(an older state schema, a state whose version disagrees with the snapshot's) is ignored and the
whole log is replayed, and a snapshot that cannot be saved is tried again at the next multiple.
"""

from __future__ import annotations

import logging

from engine_service.core.replay import FlowState
from engine_service.core.state_json import state_from_json, state_to_json
from flowledger.errors import FlowledgerError
from flowledger_core.ports import EventStore

log = logging.getLogger(__name__)


async def load_latest(store: EventStore, namespace: str, flow_id: str) -> FlowState:
    """The state at the latest usable snapshot, else the empty state."""
    snapshot = await store.load_snapshot(namespace, flow_id)
    if snapshot is None:
        return FlowState()
    try:
        state = state_from_json(snapshot.state_json)
    except FlowledgerError as exc:
        log.warning("flow %s: ignoring snapshot at %d: %s", flow_id, snapshot.version, exc)
        return FlowState()
    if state.version != snapshot.version:
        log.warning(
            "flow %s: snapshot at %d holds state of %d; ignored",
            flow_id,
            snapshot.version,
            state.version,
        )
        return FlowState()
    return state


async def save_if_due(
    store: EventStore, namespace: str, flow_id: str, state: FlowState, every: int, last: int
) -> int:
    """Save ``state`` when it passed a multiple of ``every`` since ``last`` (the version of the
    last snapshot saved or loaded); returns the new ``last``. ``every <= 0`` never saves."""
    if every <= 0 or state.version // every <= last // every:
        return last
    try:
        await store.save_snapshot(namespace, flow_id, state.version, state_to_json(state))
    except FlowledgerError as exc:
        log.warning("flow %s: snapshot at %d not saved: %s", flow_id, state.version, exc)
        return last
    return state.version
