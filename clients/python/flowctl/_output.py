"""Human and JSON output: tables and colour on a terminal, plain aligned text otherwise."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from flowctl import _explain as explain
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


# Columns holding ids: never wrapped (an id split over lines cannot be copied).
_ID_COLUMNS = frozenset({"flow", "parent", "task"})


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; elsewhere plain columns separated by two spaces."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if is_tty():
        grid = Table(title=title, title_justify="left")
        for i, column in enumerate(columns):
            if column in _ID_COLUMNS:
                width = max([len(column), *(len(r[i]) for r in cells)])
                grid.add_column(column, no_wrap=True, min_width=width)
            else:
                grid.add_column(column, overflow="fold")  # stays whole, never "…"
        for row in cells:
            grid.add_row(*row)
        console().print(grid)
        return
    if title:
        click.echo(title)
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(columns)]
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


def clock_text(when: datetime | None) -> str:
    """``HH:MM:SS.mmm`` in UTC (the date is the flow's, shown once in its header)."""
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def event_rows(events: Sequence[t.Event]) -> list[list[Any]]:
    rows = []
    for event in events:
        payload = event.payload if isinstance(event.payload, dict) else {}
        rows.append([
            event.version,
            clock_text(event.ts),
            event.variant,
            event.type.value,
            payload.get("step_id", ""),
            payload.get("attempt", ""),
            explain.event_detail(event),
        ])
    return rows


EVENT_COLUMNS = ("ver", "time (UTC)", "v", "event", "step", "try", "detail")


def print_events(events: Sequence[t.Event]) -> None:
    table(None, EVENT_COLUMNS, event_rows(events))


def print_flow_view(view: t.FlowView, events: Sequence[t.Event]) -> None:
    """The flow's header, its steps (with timings) and what it needs from you."""
    flow = view.flow
    ended = flow.updated_at if view.status.terminal else None
    took = (ended - flow.created_at).total_seconds() if ended and flow.created_at else None
    fields([
        ("flow", flow.flow_id),
        ("definition", f"{view.definition_name} v{view.definition_version}"),
        ("status", status_text(flow.status)),
        ("parent", flow.parent_flow_id or ""),
        ("started by", view.started_by),
        ("variants", view.variants),
        ("created", time_text(flow.created_at)),
        ("ended", time_text(ended) + (f" (took {explain.duration_text(took)})" if took else "")),
    ])
    timings = explain.step_timings(events)
    rows = []
    for s in view.steps:
        timing = timings.get(s.step_id)
        rows.append([
            s.step_id, step_status_text(s), s.attempts,
            clock_text(timing.started) if timing else "",
            explain.duration_text(timing.took) if timing else "",
            s.fingerprint or "",
        ])
    table(None, ("step", "status", "tries", "started", "took", "fingerprint"), rows)
    fields([("flow fingerprint", flow_fingerprint_text(view))])
    for line in explain.notes(view, events):
        click.echo(line)


OUTPUT_SHOWN_CHARS = 2000


def print_outputs(view: t.FlowView, artifacts: t.Artifacts) -> None:
    """Each step's outputs as indented JSON, cut after OUTPUT_SHOWN_CHARS characters (``--json``
    has them whole)."""
    by_hash = artifacts.by_hash()
    for step in view.steps:
        for h in step.output_hashes:
            click.echo(f"\noutput of {step.step_id} ({h[:16]}...):")
            artifact = by_hash.get(h)
            if artifact is None:
                click.echo("  (missing from the store)")
                continue
            text = json.dumps(artifact.payload, indent=2, sort_keys=True, ensure_ascii=False)
            if len(text) > OUTPUT_SHOWN_CHARS:
                cut = len(text) - OUTPUT_SHOWN_CHARS
                text = f"{text[:OUTPUT_SHOWN_CHARS]}\n... ({cut} more characters: --json)"
            click.echo("\n".join("  " + line for line in text.splitlines()))


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
