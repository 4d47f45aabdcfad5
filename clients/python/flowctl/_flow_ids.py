"""Flow ids as people type them: a unique prefix names a flow, as one names a commit in git.

Every command that takes a FLOW_ID takes any start of one (at least a character; case and
hyphens as you like): the engine lists the flows whose id begins with it (ListFlowRuns'
``flow_id_prefix``, one range of the store's index) and the one it names is used. None, or more
than one, is a one-line error that says so.
"""

from __future__ import annotations

import click

from flowctl._app import call, settings
from flowctl.completion import complete_flow_id
from flowledger.client import FlowledgerClient
from flowledger_core.id_prefix import canonical_prefix, is_id_prefix

_FULL = 36
_SHOWN = 5


def _as_given(text: str) -> str | None:
    """``text`` as the id to use without asking the engine (a whole id, in canonical form; or
    what cannot begin an id, passed on for the engine to refuse), else None: a prefix."""
    prefix = canonical_prefix(text)
    if not is_id_prefix(prefix):
        return text
    return prefix if len(prefix) == _FULL else None


async def resolve(client: FlowledgerClient, namespace: str, text: str) -> str:
    """The id of the one flow whose id begins with ``text`` (see :func:`_as_given`)."""
    given = _as_given(text)
    if given is not None:
        return given
    prefix = canonical_prefix(text)
    page = await client.list_flows(namespace, flow_id_prefix=prefix, page_size=_SHOWN + 1)
    ids = [f.flow_id for f in page.flows]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise click.ClickException(
            f"no flow of namespace {namespace!r} has an id beginning with {text!r}"
        )
    more = ", ..." if len(ids) > _SHOWN else ""
    raise click.ClickException(
        f"{text!r} begins the ids of several flows of namespace {namespace!r} "
        f"({', '.join(ids[:_SHOWN])}{more}): give more of the id"
    )


def resolved(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A FLOW_ID parameter's callback: the whole id of the flow ``value`` begins (no call to the
    engine for a whole id; none while the shell completes a command line)."""
    if ctx.resilient_parsing or not value:
        return value
    given = _as_given(value)
    if given is not None:
        return given
    namespace = settings(ctx).namespace
    return call(ctx, lambda client: resolve(client, namespace, value))


flow_id_argument = click.argument("flow_id", shell_complete=complete_flow_id, callback=resolved)
"""The FLOW_ID argument of a command: any unique start of an id."""
