"""``flowctl run FILE``: publish a definition file if needed, start a flow, show it run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from flowctl import _explain as explain
from flowctl import _output as out
from flowctl._app import call, load_definition, parse_json_option, settings
from flowctl.defs import create
from flowledger import types as t
from flowledger.client import FlowledgerClient


@dataclass(frozen=True)
class RunResult:
    definition: t.DefinitionVersion
    flow_id: str
    events: tuple[t.Event, ...]
    view: t.FlowView
    # --within elapsed before the flow ended (it goes on without us).
    timed_out: bool = False


def keeps_running(flow_id: str) -> str:
    return (
        f"flow {flow_id} keeps running in the engine: follow it with `flowctl watch {flow_id}`, "
        f"stop it with `flowctl cancel {flow_id}`"
    )


class StepProgress:
    """Per-step progress: a live bar on a terminal, a line per step change elsewhere."""

    def __init__(self, steps: int, quiet: bool) -> None:
        self._quiet = quiet
        self._bar: Progress | None = None
        if not quiet and out.is_tty():
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                console=out.console(), transient=True,
            )
            self._task = self._bar.add_task("starting", total=steps)
            self._bar.start()

    def event(self, event: t.Event) -> None:
        payload = event.payload if isinstance(event.payload, dict) else {}
        step = payload.get("step_id", "")
        kind = event.type
        if self._bar is not None:
            if kind is t.EventType.STEP_STARTED:
                self._bar.update(self._task, description=f"running {step}")
            elif kind in (t.EventType.STEP_FINISHED, t.EventType.STEP_SKIPPED):
                self._bar.advance(self._task)
        if self._quiet or kind not in _SHOWN:
            return
        line = f"  {_SHOWN[kind]:<9} {step}"
        if kind in (t.EventType.STEP_FAILED, t.EventType.STEP_ATTEMPT_FAILED):
            line += f": {explain.event_detail(event)}"
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            click.echo(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


_SHOWN = {
    t.EventType.STEP_STARTED: "started",
    t.EventType.STEP_FINISHED: "finished",
    t.EventType.STEP_FAILED: "failed",
    t.EventType.STEP_SKIPPED: "skipped",
    t.EventType.STEP_ATTEMPT_FAILED: "retrying",
}


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "input_text", default=None, metavar="JSON", help="The flow's input.")
@click.option("--name", default=None, help="Definition name (default: the file's, else its stem).")
@click.option("--idempotency-key", default="", help="Repeat-safe key: same key, same flow.")
@click.option("--within", default=300.0, show_default=True, help="Seconds to wait at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, no progress.")
@click.pass_context
def run(
    ctx: click.Context,
    file: Path,
    input_text: str | None,
    name: str | None,
    idempotency_key: str,
    within: float,
    as_json: bool,
) -> None:
    """Run a flow from a YAML/JSON definition file and print its events and fingerprint.

    The definition is created and published first unless this exact file already is.
    Exit status 1 when the flow does not complete.
    """
    ns = settings(ctx).namespace
    definition = load_definition(file, name)
    flow_input: Any = parse_json_option(input_text, "--input")

    async def go(client: FlowledgerClient) -> RunResult:
        version = (await create(client, ns, definition, f"flowctl run {file.name}")).version
        if version.state is not t.DefinitionState.PUBLISHED:
            version = await client.publish_definition(ns, version.name, version.version)
        started = await client.start_flow(
            ns, version.name, flow_input, version=version.version,
            idempotency_key=idempotency_key,
        )
        if not as_json:
            click.echo(f"flow {started.flow_id} ({version.name} v{version.version}) started")
        running.append(started.flow_id)
        progress = StepProgress(len(version.steps), quiet=as_json)
        events: list[t.Event] = []
        timed_out = False
        try:
            async with asyncio.timeout(within):
                async for update in client.watch_flow(ns, started.flow_id):
                    for event in update.events:
                        events.append(event)
                        progress.event(event)
                    if update.status.terminal:
                        break
        except TimeoutError:
            timed_out = True  # the flow waits or is slow; the engine is fine
        finally:
            progress.close()
        view = await client.describe_flow(ns, started.flow_id)
        return RunResult(version, started.flow_id, tuple(events), view, timed_out)

    running: list[str] = []
    try:
        result = call(ctx, go)
    except KeyboardInterrupt:
        if running:
            click.echo(f"\ninterrupted: {keeps_running(running[0])}", err=True)
        ctx.exit(130)
    view = result.view
    if as_json:
        out.print_json({
            "flow_id": result.flow_id,
            "definition": {
                "name": result.definition.name,
                "version": result.definition.version,
                "definition_hash": result.definition.definition_hash,
            },
            "status": view.status,
            "variants": view.variants,
            "flow_fingerprint": view.flow_fingerprint,
            "steps": view.steps,
            "events": result.events,
            "timed_out": result.timed_out,
        })
    else:
        click.echo("")
        out.print_events(result.events)
        click.echo("")
        out.fields([
            ("status", out.status_text(view.status)),
            ("variants", view.variants),
            *((f"step {s.step_id}", s.fingerprint or "") for s in view.steps),
            ("flow fingerprint", out.flow_fingerprint_text(view)),
        ])
        for line in explain.notes(view, result.events):
            click.echo(line)
    if result.timed_out:
        raise click.ClickException(
            f"the flow is {view.status.value} after --within {within:g} s; "
            + keeps_running(result.flow_id)
        )
    if view.status is not t.FlowStatus.COMPLETED:
        ctx.exit(1)

