"""Reading and acting on flows: ``flows ls|show``, ``events``, ``watch``, ``branch``, ``verify``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from flowctl import _output as out
from flowctl._app import call, json_option, settings
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
@click.option("--definition", default="", help="Only flows of this definition.")
@click.option("--parent", default="", help="Only branches of this flow.")
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
@click.argument("flow_id")
@json_option
@click.pass_context
def flows_show(ctx: click.Context, flow_id: str, as_json: bool) -> None:
    """Describe one flow: status, steps, fingerprints."""
    ns = _ns(ctx)
    view = call(ctx, lambda c: c.describe_flow(ns, flow_id))
    if as_json:
        out.print_json(view)
    else:
        out.print_flow_view(view)


async def read_events(client: FlowledgerClient, namespace: str, flow_id: str) -> list[t.Event]:
    """Every event the flow has now (a live flow is read up to its current version)."""
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
@click.argument("flow_id")
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
@click.argument("flow_id")
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
                    click.echo("  ".join(str(c) for c in row if c != ""))
            status = update.status
            if status.terminal:
                break
        return status

    status = call(ctx, follow)
    if not as_json and status is not None:
        click.echo(f"flow {flow_id}: {status.value}")


def parse_params(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``step.key=value`` pairs as ``{step: {key: value}}``; values are JSON when they parse,
    else text."""
    params: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, eq, raw = pair.partition("=")
        step, dot, key = target.partition(".")
        if not eq or not dot or not step or not key:
            raise click.BadParameter(f"{pair!r} is not step.key=value", param_hint="--param")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(step, {})[key] = value
    return params


@click.command()
@click.argument("flow_id")
@click.option("--at", "at_step", required=True, help="Re-run from this step on.")
@click.option(
    "--param", "pairs", multiple=True, metavar="STEP.KEY=VALUE",
    help="A changed param for a step at or after --at (repeatable; VALUE is JSON or text).",
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
    ns, params = _ns(ctx), parse_params(pairs)

    async def go(
        client: FlowledgerClient,
    ) -> tuple[t.StartedFlow, t.FlowView | None, str]:
        started = await client.branch_flow(
            ns, flow_id, at_step, params=params, idempotency_key=idempotency_key
        )
        if not wait:
            return started, None, ""
        view = await client.wait_for_flow(ns, started.flow_id, within=within)
        why = ""
        if view.status is not t.FlowStatus.COMPLETED:
            why = await _why_ended(client, ns, started.flow_id, view.status)
        return started, view, why

    started, view, why = call(ctx, go)
    if as_json:
        out.print_json({"flow_id": started.flow_id, "existed": started.existed, "view": view})
    else:
        click.echo(f"branch {started.flow_id} of {flow_id} at {at_step}")
        if view is not None:
            out.print_flow_view(view)
    if why:
        # Waited for, and did not complete: an error, as for ``flowctl run``.
        raise click.ClickException(f"branch {started.flow_id} {why}")


async def _why_ended(
    client: FlowledgerClient, namespace: str, flow_id: str, status: t.FlowStatus
) -> str:
    """``failed at step s: ErrorType: reason`` (from its FlowFailed), or ``ended <status>``."""
    for event in reversed(await read_events(client, namespace, flow_id)):
        p = event.payload
        if event.type is t.EventType.FLOW_FAILED and isinstance(p, dict):
            return f"failed at step {p.get('step_id')}: {p.get('error_type')}: {p.get('reason')}"
    return f"ended {status.value}"


@click.command()
@click.argument("flow_id")
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
