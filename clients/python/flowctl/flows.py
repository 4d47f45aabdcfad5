"""Reading and acting on flows: ``flows ls|show``, ``events``, ``watch``, ``branch``, ``verify``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from flowctl import _explain as explain
from flowctl import _output as out
from flowctl._app import call, json_option, settings
from flowctl._flow_ids import flow_id_argument, resolved
from flowctl._params import parse_params, patched
from flowctl.completion import complete_definition, complete_flow_id
from flowledger import types as t
from flowledger.client import FlowledgerClient


@click.group()
def flows() -> None:
    """List and describe flows."""


@flows.command("ls")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in t.FlowStatus]),
    help="Only flows in this status (repeatable).",
)
@click.option(
    "--definition", default="", help="Only flows of this definition.",
    shell_complete=complete_definition,
)
@click.option(
    "--parent", default="", help="Only branches of this flow (any unique start of its id).",
    shell_complete=complete_flow_id, callback=resolved,
)
@click.option("--limit", default=50, show_default=True, help="At most this many flows.")
@json_option
@click.pass_context
def flows_ls(
    ctx: click.Context,
    statuses: Sequence[str],
    definition: str,
    parent: str,
    limit: int,
    as_json: bool,
) -> None:
    """List flows of the namespace, newest first."""
    ns = _ns(ctx)
    page = call(
        ctx,
        lambda c: c.list_flows(
            ns,
            statuses=[t.FlowStatus(s) for s in statuses],
            definition_name=definition,
            parent_flow_id=parent,
            page_size=limit,
        ),
    )
    if as_json:
        out.print_json(page.flows)
        return
    out.table(
        None,
        ("flow", "definition", "status", "events", "parent", "created"),
        [
            [
                f.flow_id, f.name, out.status_text(f.status), f.version,
                f.parent_flow_id or "", out.time_text(f.created_at),
            ]
            for f in page.flows
        ],
    )


@flows.command("show")
@flow_id_argument
@click.option(
    "--outputs", is_flag=True,
    help="Also print each step's outputs (its artifacts, JSON; long ones cut).",
)  # fmt: skip
@json_option
@click.pass_context
def flows_show(ctx: click.Context, flow_id: str, outputs: bool, as_json: bool) -> None:
    """Describe one flow: status, steps with timings and fingerprints, what it waits for or why
    it failed."""
    ns = _ns(ctx)

    async def go(client: FlowledgerClient) -> tuple[t.FlowView, list[t.Event], t.Artifacts]:
        view = await client.describe_flow(ns, flow_id)
        found = [] if as_json else await read_events(client, ns, view.flow.flow_id, view)
        hashes = [h for s in view.steps for h in s.output_hashes] if outputs else []
        artifacts = await client.fetch_artifacts(ns, hashes) if hashes else t.Artifacts((), ())
        return view, found, artifacts

    view, found, artifacts = call(ctx, go)
    if as_json:
        data = out.jsonable(view)
        if outputs:
            by_hash = artifacts.by_hash()
            data["outputs"] = {
                s.step_id: [by_hash[h].payload if h in by_hash else None for h in s.output_hashes]
                for s in view.steps
            }
        out.print_json(data)
        return
    out.print_flow_view(view, found)
    if outputs:
        out.print_outputs(view, artifacts)


async def read_events(
    client: FlowledgerClient, namespace: str, flow_id: str, view: t.FlowView | None = None
) -> list[t.Event]:
    """Every event the flow has now (a live flow is read up to its current version: that of
    ``view`` when the caller has just described it, else described here)."""
    if view is None:
        view = await client.describe_flow(namespace, flow_id)
    events: list[t.Event] = []
    if view.flow.version == 0:
        return events
    async for update in client.watch_flow(namespace, flow_id):
        events.extend(update.events)
        if update.status.terminal or (events and events[-1].version >= view.flow.version):
            break
    return events


@click.command()
@flow_id_argument
@json_option
@click.pass_context
def events(ctx: click.Context, flow_id: str, as_json: bool) -> None:
    """Print a flow's events with their compact variants (I S F ... C)."""
    ns = _ns(ctx)
    found = call(ctx, lambda c: read_events(c, ns, flow_id))
    if as_json:
        out.print_json(found)
        return
    out.print_events(found)
    click.echo(f"variants: {''.join(e.variant for e in found)}")


@click.command()
@flow_id_argument
@click.option("--after", default=0, show_default=True, help="Start after this event version.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_context
def watch(ctx: click.Context, flow_id: str, after: int, as_json: bool) -> None:
    """Follow a flow's events live until it ends."""
    ns = _ns(ctx)

    async def follow(client: FlowledgerClient) -> t.FlowStatus | None:
        status = None
        async for update in client.watch_flow(ns, flow_id, after):
            for event in update.events:
                if as_json:
                    click.echo(json.dumps(out.jsonable(event), sort_keys=True))
                else:
                    row = out.event_rows([event])[0]
                    click.echo("  ".join(str(c) for c in row if c != "").rstrip())
            status = update.status
            if status.terminal:
                break
        return status

    status = call(ctx, follow)
    if not as_json and status is not None:
        click.echo(f"flow {flow_id}: {status.value}")


@click.command()
@flow_id_argument
@click.option("--at", "at_step", required=True, help="Re-run from this step on.")
@click.option(
    "--param", "pairs", multiple=True, metavar="STEP.KEY=VALUE",
    help="Set one key of the params of a step at or after --at, keeping its other keys (a JSON "
    "merge patch: STEP.KEY.SUB=... sets a nested key, VALUE null removes the key; VALUE is JSON "
    "or text; repeatable).",
)
@click.option("--idempotency-key", default="", help="Repeat-safe key of this branch.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for it to end.")
@click.option("--within", default=300.0, show_default=True, help="Seconds to wait at most.")
@json_option
@click.pass_context
def branch(
    ctx: click.Context,
    flow_id: str,
    at_step: str,
    pairs: Sequence[str],
    idempotency_key: str,
    wait: bool,
    within: float,
    as_json: bool,
) -> None:
    """Branch a finished flow before a step, optionally with changed params (waiting: exit 1
    unless the branch completes)."""
    ns, patches = _ns(ctx), parse_params(pairs)

    async def go(
        client: FlowledgerClient,
    ) -> tuple[t.StartedFlow, t.FlowView | None, list[t.Event], str]:
        params = {}
        if patches:
            current = explain.effective_params(await read_events(client, ns, flow_id))
            params = patched(current, patches)
        started = await client.branch_flow(
            ns, flow_id, at_step, params=params, idempotency_key=idempotency_key
        )
        if not wait:
            return started, None, [], ""
        view = await client.wait_for_flow(ns, started.flow_id, within=within)
        found = await read_events(client, ns, started.flow_id, view)
        why = ""
        if view.status is not t.FlowStatus.COMPLETED:
            why = _why_ended(found, view.status)
        return started, view, found, why

    started, view, found, why = call(ctx, go)
    if as_json:
        out.print_json({"flow_id": started.flow_id, "existed": started.existed, "view": view})
    else:
        click.echo(f"branch {started.flow_id} of {flow_id} at {at_step}")
        if view is not None:
            out.print_flow_view(view, found)
    if why:
        # Waited for, and did not complete: an error, as for ``flowctl run``.
        raise click.ClickException(f"branch {started.flow_id} {why}")


def _why_ended(found: Sequence[t.Event], status: t.FlowStatus) -> str:
    """``failed at step s: ErrorType: reason`` (from its FlowFailed), or ``ended <status>``."""
    for event in reversed(found):
        p = event.payload
        if event.type is t.EventType.FLOW_FAILED and isinstance(p, dict):
            return f"failed at step {p.get('step_id')}: {explain.failure(p)}"
    return f"ended {status.value}"


@click.command()
@flow_id_argument
@json_option
@click.pass_context
def verify(ctx: click.Context, flow_id: str, as_json: bool) -> None:
    """Replay a flow's log and check every hash and fingerprint (exit 1 if it diverged)."""
    ns = _ns(ctx)
    report = call(ctx, lambda c: c.verify_flow(ns, flow_id))
    if as_json:
        out.print_json(report)
    elif report.ok:
        click.echo(
            f"verify {flow_id}: ok ({report.events_checked} events, "
            f"{report.artifacts_checked} artifacts)"
        )
    else:
        d = report.divergence
        where = f" at version {d.version} step {d.step_id}: {d.kind}" if d else ""
        click.echo(f"verify {flow_id}: DIVERGED{where}")
    if not report.ok:
        ctx.exit(1)


def _ns(ctx: click.Context) -> str:
    return settings(ctx).namespace
