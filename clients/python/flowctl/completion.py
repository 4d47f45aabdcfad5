"""Shell completion: ``flowctl completion bash|zsh|fish`` prints the script to source; flow ids
and definition names complete from the engine the command line names (click's completion)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from flowctl._app import Settings, settings_from_params
from flowledger.client import FlowledgerClient

SHELLS = ("bash", "zsh", "fish")
_COMPLETE_VAR = "_FLOWCTL_COMPLETE"
# A completion must answer at once, or not at all; FLOWCTL_COMPLETE_TIMEOUT (seconds) changes it.
_ASK_ENV = "FLOWCTL_COMPLETE_TIMEOUT"
_ASK_DEFAULT_S = 2.0
_SHOWN = 200


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script of SHELL. Load it in your shell's start-up file:

    \b
      bash:  eval "$(flowctl completion bash)"    (~/.bashrc)
      zsh:   eval "$(flowctl completion zsh)"     (~/.zshrc)
      fish:  flowctl completion fish | source     (~/.config/fish/config.fish)
    """
    root = ctx.find_root()
    assert isinstance(root.command, click.Group)
    complete = get_completion_class(shell)
    assert complete is not None  # the choice lists only the shells click knows
    click.echo(complete(root.command, {}, "flowctl", _COMPLETE_VAR).source())


Ask = Callable[[FlowledgerClient, Settings], Awaitable[list[str]]]


def _ask(ctx: click.Context, work: Ask) -> list[str]:
    """What the engine answers within the budget, or nothing (a completion never shows an
    error)."""
    opts = settings_from_params(ctx.find_root().params)
    try:
        ask_s = float(os.environ.get(_ASK_ENV) or _ASK_DEFAULT_S)
        credentials, options = opts.transport.channel(opts.engine)

        async def go() -> list[str]:
            async with FlowledgerClient(
                opts.engine, timeout=ask_s, credentials=credentials, options=options
            ) as client:
                return await asyncio.wait_for(work(client, opts), ask_s)

        return asyncio.run(go())
    except Exception:
        return []


def complete_flow_id(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    async def ids(client: FlowledgerClient, opts: Settings) -> list[str]:
        page = await client.list_flows(opts.namespace, page_size=_SHOWN)
        return [f.flow_id for f in page.flows]

    return [CompletionItem(i) for i in _ask(ctx, ids) if i.startswith(incomplete)]


def complete_definition(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    async def names(client: FlowledgerClient, opts: Settings) -> list[str]:
        page = await client.list_definitions(opts.namespace, "", page_size=_SHOWN)
        return list(dict.fromkeys(v.name for v in page.versions))

    return [CompletionItem(n) for n in _ask(ctx, names) if n.startswith(incomplete)]
