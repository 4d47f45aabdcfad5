"""A flow's log read for a person: each event in a phrase, and what the flow needs from you.

Every place flowctl shows a failure shows ``error_type: reason``; a waiting flow says what it
waits for and the command that ends the wait; a cancel says who and why; a branch its parent,
fork step and changed params; steps get their start time and duration. All of it comes from the
events the engine recorded (the payload keys of engine_service/core/event_codec.py).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowledger import types as t

E = t.EventType


def _payload(event: t.Event) -> dict[str, Any]:
    payload = event.payload
    return payload if isinstance(payload, dict) else {}


def failure(payload: Mapping[str, Any]) -> str:
    """``ErrorType: reason`` of a failure event's payload."""
    error_type, reason = payload.get("error_type") or "", payload.get("reason") or ""
    return f"{error_type}: {reason}" if error_type and reason else error_type or reason


def event_detail(event: t.Event) -> str:
    """The event in a phrase (the step id is shown beside it, not in it)."""
    p, kind = _payload(event), event.type
    if kind in (E.STEP_FAILED, E.FLOW_FAILED, E.COMPENSATION_FAILED):
        return failure(p)
    if kind is E.STEP_ATTEMPT_FAILED:
        return f"{failure(p)}; retry in {p.get('delay_ms', 0) / 1000:g} s"
    if kind in (E.STEP_FINISHED, E.STEP_SKIPPED):
        return f"fingerprint {p.get('fingerprint', '')}"
    if kind is E.FLOW_COMPLETED:
        return f"flow fingerprint {p.get('flow_fingerprint', '')}"
    if kind is E.FLOW_INITIALIZED:
        return f"{p.get('definition_name', '')} v{p.get('definition_version', '')}"
    if kind is E.STEP_SIGNAL:
        return f"waits for signal {p.get('name', '')!r}"
    if kind is E.SIGNAL_RECEIVED:
        by = f" from {p['sent_by']}" if p.get("sent_by") else ""
        return f"signal {p.get('name', '')!r}{by}"
    if kind is E.TIMER_STARTED:
        return f"until {p['fire_at']}" if p.get("fire_at") else ""
    if kind is E.TASK_SCHEDULED:
        return f"task {p.get('task_id', '')} on queue {p.get('queue', '')!r}"
    if kind is E.FLOW_CANCEL_REQUESTED:
        by = p.get("requested_by") or "someone"
        return f"by {by}" + (f": {p['reason']}" if p.get("reason") else "")
    if kind is E.FLOW_CANCELLED:
        if p.get("terminated_by") is not None:
            by = p["terminated_by"] or "someone"
            return f"terminated by {by}" + (f": {p['reason']}" if p.get("reason") else "")
        return p.get("reason") or ""
    if kind is E.PROPERTY_PREFERENCE_ASSIGNED:
        return "params " + json.dumps(p.get("params", {}), sort_keys=True)
    return ""


def effective_params(events: Sequence[t.Event]) -> dict[str, dict[str, Any]]:
    """Every step's params as the flow runs them: its definition's config, replaced whole by a
    branch's PropertyPreferenceAssigned (decision 0007)."""
    params: dict[str, dict[str, Any]] = {}
    for event in events:
        p = _payload(event)
        if event.type is E.FLOW_INITIALIZED:
            for step in p.get("steps", []):
                if isinstance(step, dict) and isinstance(step.get("config"), dict):
                    params[str(step.get("id"))] = dict(step["config"])
        elif event.type is E.PROPERTY_PREFERENCE_ASSIGNED:
            for step_id, value in p.get("params", {}).items():
                if isinstance(value, dict):
                    params[step_id] = dict(value)
    return params


@dataclass(frozen=True)
class StepTiming:
    started: datetime | None
    ended: datetime | None

    @property
    def took(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


_STEP_ENDS = (E.STEP_FINISHED, E.STEP_FAILED, E.STEP_SKIPPED)


def step_timings(events: Sequence[t.Event]) -> dict[str, StepTiming]:
    """When each step first started and when it ended (finished, failed or skipped)."""
    started: dict[str, datetime | None] = {}
    ended: dict[str, datetime | None] = {}
    for event in events:
        step = _payload(event).get("step_id")
        if not isinstance(step, str):
            continue
        if event.type is E.STEP_STARTED:
            started.setdefault(step, event.ts)
        elif event.type in _STEP_ENDS:
            ended[step] = event.ts
            started.setdefault(step, event.ts)
    return {s: StepTiming(started[s], ended.get(s)) for s in started}


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def notes(view: t.FlowView, events: Sequence[t.Event]) -> list[str]:
    """What the flow needs from you, or why it ended: one line each."""
    flow_id = view.flow.flow_id
    lines: list[str] = []
    if view.flow.parent_flow_id:
        lines.append(_branch_note(view.flow, events))
    for step in view.steps:
        wait = step.wait
        if step.status is not t.StepStatus.WAITING or wait is None:
            continue
        if wait.signal_name:
            command = shlex.join(["flowctl", "signal", flow_id, wait.signal_name, "<JSON>"])
            lines.append(f"step {step.step_id} waits for signal {wait.signal_name!r}: {command}")
        elif wait.task_queue:
            lines.append(
                f"step {step.step_id} waits for a worker on task queue {wait.task_queue!r} "
                "(a TaskWorker serving that queue completes it: examples/worker.py)"
            )
        elif wait.until is not None:
            lines.append(f"step {step.step_id} waits until {wait.until.isoformat()}")
    for event in events:
        p = _payload(event)
        if event.type is E.FLOW_FAILED:
            lines.append(f"failed at step {p.get('step_id', '')}: {failure(p)}")
        elif event.type is E.FLOW_CANCEL_REQUESTED:
            lines.append("cancel requested " + event_detail(event))
        elif event.type is E.FLOW_CANCELLED and p.get("terminated_by") is not None:
            lines.append(event_detail(event) + " (no compensation ran)")
        elif event.type is E.COMPENSATION_FAILED:
            lines.append(f"compensation of step {p.get('step_id', '')} failed: {failure(p)}")
    return lines


def _branch_note(flow: t.Flow, events: Sequence[t.Event]) -> str:
    at = ""
    try:
        at = json.loads(flow.metadata_json or "{}").get("at_step", "")
    except (json.JSONDecodeError, AttributeError):
        at = ""
    changed = [
        _payload(e).get("params") for e in events
        if e.type is E.PROPERTY_PREFERENCE_ASSIGNED and e.version > flow.fork_version
    ]  # fmt: skip
    where = f" at step {at}" if at else ""
    with_params = f", params {json.dumps(changed[-1], sort_keys=True)}" if changed else ""
    return (
        f"branch of flow {flow.parent_flow_id}{where} (its events up to version "
        f"{flow.fork_version}){with_params}"
    )
