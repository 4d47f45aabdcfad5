"""Versioned definitions: ``defs create|publish|archive|rollback|ls|show``."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from flowctl import _output as out
from flowctl._app import DefinitionFile, call, json_option, load_definition, settings
from flowctl.completion import complete_definition
from flowledger import types as t
from flowledger.client import FlowledgerClient
from flowledger.errors import NotFound

_NEVER = datetime.min.replace(tzinfo=UTC)


@click.group()
def defs() -> None:
    """Create, publish, archive, roll back and list flow definitions."""


def request_id(definition: DefinitionFile) -> str:
    """Same name and text → same request id, so creating it again returns the same version."""
    digest = hashlib.sha256(f"{definition.name}\n{definition.text}".encode()).hexdigest()
    return f"flowctl-{digest[:40]}"


async def create(
    client: FlowledgerClient, namespace: str, definition: DefinitionFile, note: str = ""
) -> t.CreatedVersion:
    return await client.create_definition(
        namespace, definition.name, definition.text, format=definition.format,
        change_note=note, request_id=request_id(definition),
    )


@defs.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Definition name (default: the file's, else its stem).")
@click.option("--note", default="", help="Change note.")
@click.option("--publish", is_flag=True, help="Publish it too.")
@json_option
@click.pass_context
def defs_create(
    ctx: click.Context, file: Path, name: str | None, note: str, publish: bool, as_json: bool
) -> None:
    """Store a YAML/JSON definition file as a new draft version."""
    ns, definition = settings(ctx).namespace, load_definition(file, name)

    async def go(client: FlowledgerClient) -> t.DefinitionVersion:
        created = await create(client, ns, definition, note)
        version = created.version
        if publish and version.state is not t.DefinitionState.PUBLISHED:
            version = await client.publish_definition(ns, version.name, version.version)
        return version

    _show(call(ctx, go), as_json)


def _transition(
    verb: str, pick: Callable[[FlowledgerClient], Callable[..., Awaitable[t.DefinitionVersion]]]
) -> click.Command:
    @click.command(verb, help=f"{verb.capitalize()} version VERSION of definition NAME.")
    @click.argument("name", shell_complete=complete_definition)
    @click.argument("version", type=int)
    @click.option("--note", default="", help="Change note.")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, name: str, version: int, note: str, as_json: bool) -> None:
        ns = settings(ctx).namespace
        _show(call(ctx, lambda c: pick(c)(ns, name, version, change_note=note)), as_json)

    return command


defs.add_command(_transition("publish", lambda c: c.publish_definition))
defs.add_command(_transition("archive", lambda c: c.archive_definition))
defs.add_command(_transition("rollback", lambda c: c.rollback_definition))


@defs.command("ls")
@click.argument("name", required=False, default="", shell_complete=complete_definition)
@click.option("--limit", default=50, show_default=True, help="At most this many versions.")
@json_option
@click.pass_context
def defs_ls(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """The latest version of every definition, or every version of NAME; `runs` says which
    version new flows start from (the latest published one: after a rollback, not the
    highest)."""
    ns = settings(ctx).namespace

    async def go(client: FlowledgerClient) -> tuple[t.DefinitionPage, dict[str, int]]:
        page = await client.list_definitions(ns, name, page_size=limit)
        if name and not page.next_page_token:
            # Every version of NAME is here: the one that runs is the latest published one.
            published = [v for v in page.versions if v.state is t.DefinitionState.PUBLISHED]
            latest = max(published, key=lambda v: (v.published_at or _NEVER, v.version),
                         default=None)  # fmt: skip
            return page, ({} if latest is None else {name: latest.version})
        running: dict[str, int] = {}
        for each in dict.fromkeys(v.name for v in page.versions):
            with contextlib.suppress(NotFound):  # nothing published: no flow can start
                running[each] = (await client.get_definition(ns, each, 0)).version
        return page, running

    page, running = call(ctx, go)
    if as_json:
        out.print_json(page.versions)
        return
    out.table(
        None,
        ("name", "version", "state", "runs", "steps", "hash", "created"),
        [
            [
                v.name, v.version, v.state.value, _runs(v, running.get(v.name)), len(v.steps),
                v.definition_hash[:16], out.time_text(v.created_at),
            ]
            for v in page.versions
        ],
    )


def _runs(version: t.DefinitionVersion, running: int | None) -> str:
    if running is None:
        return "no (none published)"
    return "yes" if version.version == running else f"no (v{running} does)"


@defs.command("show")
@click.argument("name", shell_complete=complete_definition)
@click.argument("version", type=int, required=False, default=0)
@click.option("--version", "version_option", type=int, default=None, hidden=True)
@json_option
@click.pass_context
def defs_show(
    ctx: click.Context, name: str, version: int, version_option: int | None, as_json: bool
) -> None:
    """Version VERSION of definition NAME, with its steps (VERSION 0 or none: the one new flows
    start from, the latest published)."""
    ns = settings(ctx).namespace
    chosen = version_option if version_option is not None else version  # the old --version
    _show(call(ctx, lambda c: c.get_definition(ns, name, chosen)), as_json)


def _show(version: t.DefinitionVersion, as_json: bool) -> None:
    if as_json:
        out.print_json(version)
    else:
        out.print_definition(version)
