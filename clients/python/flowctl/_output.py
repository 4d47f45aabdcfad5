"""Human and JSON output: tables and colour on a terminal, plain aligned text otherwise."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from flowledger import types as t


def is_tty() -> bool:
    return sys.stdout.isatty()


def console() -> Console:
    # highlight=False: colour comes from our markup only, never from guessed numbers/paths.
    return Console(highlight=False)


def jsonable(value: Any) -> Any:
    """SDK values as JSON-ready data; an event also gets its ``variant`` and parsed ``payload``."""
    if isinstance(value, t.Event):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        data["variant"] = value.variant
        data["payload"] = value.payload
        return data
    if isinstance(value, t.FlowView):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        data["status"] = value.status.value
        return data
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, sort_keys=True))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; elsewhere plain columns separated by two spaces."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if is_tty():
        grid = Table(title=title, title_justify="left")
        for column in columns:
            grid.add_column(column, overflow="fold")  # ids stay whole, never "…"
        for row in cells:
            grid.add_row(*row)
        console().print(grid)
        return
    if title:
        click.echo(title)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
    for row in [list(columns), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``label: value`` lines (labels bold on a terminal)."""
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        label = f"{key + ':':<{width}}"
        if is_tty():
            console().print(f"[bold]{label}[/bold] {'' if value is None else value}")
        else:
            click.echo(f"{label} {'' if value is None else value}")


def status_text(status: t.FlowStatus) -> str:
    colour = {
        t.FlowStatus.COMPLETED: "green",
        t.FlowStatus.FAILED: "red",
        t.FlowStatus.CANCELLED: "yellow",
    }.get(status)
    return f"[{colour}]{status.value}[/{colour}]" if colour and is_tty() else status.value


def time_text(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else ""


_DETAIL_KEYS = ("step_id", "fingerprint", "flow_fingerprint", "error", "message")


def event_rows(events: Sequence[t.Event]) -> list[list[Any]]:
    rows = []
    for event in events:
        payload = event.payload if isinstance(event.payload, dict) else {}
        detail = {k: payload[k] for k in _DETAIL_KEYS if k in payload and k != "step_id"}
        rows.append([
            event.version,
            event.variant,
            event.type.value,
            payload.get("step_id", ""),
            json.dumps(detail, sort_keys=True) if detail else "",
        ])
    return rows


EVENT_COLUMNS = ("ver", "v", "event", "step", "detail")


def print_events(events: Sequence[t.Event]) -> None:
    table(None, EVENT_COLUMNS, event_rows(events))


def print_flow_view(view: t.FlowView) -> None:
    flow = view.flow
    fields([
        ("flow", flow.flow_id),
        ("definition", f"{view.definition_name} v{view.definition_version}"),
        ("status", status_text(flow.status)),
        ("parent", flow.parent_flow_id or ""),
        ("variants", view.variants),
        ("created", time_text(flow.created_at)),
    ])
    table(
        None,
        ("step", "status", "attempts", "fingerprint"),
        [[s.step_id, step_status_text(s), s.attempts, s.fingerprint or ""] for s in view.steps],
    )
    fields([("flow fingerprint", flow_fingerprint_text(view))])


def step_status_text(step: t.StepView) -> str:
    """``waiting (signal approved)``, ``waiting (task on queue q)``, ``waiting (until T)``
    (a signal's or task's timeout joins as ``, until T``), else the status."""
    wait = step.wait
    if step.status is not t.StepStatus.WAITING or wait is None:
        return step.status.value
    what = []
    if wait.signal_name:
        what.append(f"signal {wait.signal_name}")
    if wait.task_queue:
        what.append(f"task on queue {wait.task_queue}")
    if wait.until is not None:
        what.append(f"until {time_text(wait.until)}")
    return f"waiting ({', '.join(what)})" if what else "waiting"


def flow_fingerprint_text(view: t.FlowView) -> str:
    """The flow fingerprint; without one, why: the flow ended another way, or has not yet."""
    if view.flow_fingerprint:
        return view.flow_fingerprint
    if view.status in (t.FlowStatus.CANCELLED, t.FlowStatus.FAILED):
        return f"(none: flow {view.status.value})"
    return "(none yet)"


def print_definition(version: t.DefinitionVersion) -> None:
    fields([
        ("definition", f"{version.name} v{version.version}"),
        ("state", version.state.value),
        ("hash", version.definition_hash),
        ("note", version.change_note),
        ("created", time_text(version.created_at)),
        ("published", time_text(version.published_at)),
    ])
    table(
        None,
        ("step", "type", "config"),
        [[s.id, s.type, s.config_json if s.config else ""] for s in version.steps],
    )
