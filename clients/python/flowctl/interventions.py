"""Acting on a running flow: ``signal FLOW NAME [PAYLOAD]``, ``cancel FLOW``, ``terminate FLOW``."""

from __future__ import annotations

import click

from flowctl import _output as out
from flowctl._app import call, json_option, parse_json_option, settings
from flowctl._flow_ids import flow_id_argument
from flowctl.flows import read_events
from flowledger import types as t
from flowledger.client import FlowledgerClient


@click.command()
@flow_id_argument
@click.argument("name")
@click.argument("payload", required=False, metavar="[PAYLOAD_JSON]")
@click.option(
    "--request-id", default="",
    help="Repeat-safe id: the same id delivers the signal once.",
)  # fmt: skip
@click.option(
    "--strict", is_flag=True,
    help="Refuse (send nothing, exit 1) when no signal step of the flow's definition has NAME.",
)  # fmt: skip
@json_option
@click.pass_context
def signal(
    ctx: click.Context,
    flow_id: str,
    name: str,
    payload: str | None,
    request_id: str,
    strict: bool,
    as_json: bool,
) -> None:
    """Send signal NAME to a flow; PAYLOAD_JSON (default null) becomes the output of the
    `signal` step waiting for it. A signal sent before the step waits is kept for it; a name
    no signal step of the flow's definition has is sent with a warning (--strict refuses it)."""
    ns = settings(ctx).namespace
    value = parse_json_option(payload, "PAYLOAD_JSON")

    async def go(client: FlowledgerClient) -> tuple[t.SignalResult | None, str]:
        view = await client.describe_flow(ns, flow_id)
        definition = await client.get_definition(
            ns, view.definition_name, view.definition_version
        )
        names = [
            str(s.config.get("name")) for s in definition.steps
            if s.type == "signal" and "name" in s.config
        ]  # fmt: skip
        unknown = ""
        if name not in names:
            waits = ", ".join(repr(n) for n in names) or "no signal at all"
            unknown = (
                f"no step of flow {view.flow.flow_id}'s definition {definition.name} "
                f"v{definition.version} waits for signal {name!r} (its signal steps wait for "
                f"{waits})"
            )
            if strict:
                return None, unknown
        result = await client.signal_flow(
            ns, view.flow.flow_id, name, value, request_id=request_id, sent_by="flowctl"
        )
        return result, unknown

    result, unknown = call(ctx, go)
    if result is None:
        raise click.ClickException(f"{unknown}; nothing sent (--strict)")
    if unknown:
        click.echo(f"warning: {unknown}; it is kept, but no step will read it", err=True)
    if as_json:
        out.print_json(result)
        return
    if result.duplicate:
        what = "already delivered (same request id): nothing written"
    elif result.resumed:
        what = "delivered: the waiting step resumes"
    else:
        what = "delivered: kept until a step waits for it"
    click.echo(f"signal {name} to flow {flow_id}: {what} (version {result.version})")


@click.command()
@flow_id_argument
@click.option("--reason", default="", help="Why (recorded in the flow's log).")
@click.option(
    "--wait/--no-wait", default=False, show_default=True,
    help="Wait until the compensations ran and the flow ended.",
)  # fmt: skip
@click.option("--within", default=300.0, show_default=True, help="Seconds to wait at most.")
@json_option
@click.pass_context
def cancel(
    ctx: click.Context, flow_id: str, reason: str, wait: bool, within: float, as_json: bool
) -> None:
    """Cancel a flow: no further step starts, the compensations of its finished steps run in
    reverse order, then it is cancelled."""
    ns = settings(ctx).namespace

    async def go(
        client: FlowledgerClient,
    ) -> tuple[t.CancelResult, t.FlowView | None, list[t.Event]]:
        result = await client.cancel_flow(ns, flow_id, reason=reason, cancelled_by="flowctl")
        if not wait:
            return result, None, []
        view = await client.wait_for_flow(ns, flow_id, within=within)
        return result, view, await read_events(client, ns, flow_id, view)

    result, view, found = call(ctx, go)
    if as_json:
        out.print_json({"version": result.version, "already": result.already, "view": view})
        return
    what = "was already cancelled or cancelling" if result.already else "cancel requested"
    click.echo(f"flow {flow_id}: {what} (version {result.version})")
    if view is not None:
        out.print_flow_view(view, found)


@click.command()
@flow_id_argument
@click.option("--reason", default="", help="Why (recorded in the flow's log).")
@json_option
@click.pass_context
def terminate(ctx: click.Context, flow_id: str, reason: str, as_json: bool) -> None:
    """End a flow now: it is cancelled at once, no compensation runs and no further step starts
    (recorded, with the reason). For what `cancel` cannot stop."""
    ns = settings(ctx).namespace
    result = call(
        ctx, lambda c: c.terminate_flow(ns, flow_id, reason=reason, terminated_by="flowctl")
    )
    if as_json:
        out.print_json({"version": result.version, "already": result.already})
        return
    what = "was already cancelled" if result.already else "terminated"
    click.echo(f"flow {flow_id}: {what} (version {result.version})")
