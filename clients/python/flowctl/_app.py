"""What every flowctl command shares: global options, the SDK call seam, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
import yaml

from flowctl._connect import Transport
from flowledger.client import FlowledgerClient
from flowledger.errors import FlowledgerError, InternalError, Unauthenticated, Unavailable
from flowledger_core.documents import DocumentError, load_document

T = TypeVar("T")

DEFAULT_ENGINE = "127.0.0.1:50052"
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool SIGPIPE ended
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Settings:
    """The global options, stored on the click context for every sub-command."""

    engine: str
    namespace: str
    timeout: float
    transport: Transport


def settings_from_params(params: Mapping[str, Any]) -> Settings:
    """The global options as the root command parsed them (``cli``'s parameters)."""
    transport = Transport(
        params.get("tls"), params.get("ca_file"), params.get("client_cert"),
        params.get("client_key"), params.get("server_name"), params.get("token"),
        params.get("token_file"),
    )  # fmt: skip
    return Settings(
        params.get("engine") or DEFAULT_ENGINE,
        params.get("namespace") or DEFAULT_NAMESPACE,
        params.get("timeout") or 30.0,
        transport,
    )


def settings(ctx: click.Context) -> Settings:
    found = ctx.find_object(Settings)
    assert found is not None, "the root group sets Settings"
    return found


def call(ctx: click.Context, work: Callable[[FlowledgerClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the engine, in a fresh event loop."""
    opts = settings(ctx)
    credentials, options = opts.transport.channel(opts.engine)

    async def go() -> T:
        async with FlowledgerClient(
            opts.engine, timeout=opts.timeout, credentials=credentials, options=options
        ) as client:
            return await work(client)

    try:
        return asyncio.run(go())
    except InternalError as exc:
        if exc.reason != "UNIMPLEMENTED":
            raise
        raise click.ClickException(
            f"{opts.engine} is not a flowledger engine: it does not serve EngineService "
            f"({exc.message}); is it the store? `flowctl up` prints the engine's address"
        ) from None
    except (Unavailable, Unauthenticated) as exc:
        hint = _hint(opts, exc)
        if not hint:
            raise
        raise click.ClickException(f"{one_line(exc)}; {hint}") from None


def _hint(opts: Settings, exc: Unavailable | Unauthenticated) -> str:
    """What to try next, for the two failures a connection setting usually causes."""
    transport = opts.transport
    if isinstance(exc, Unauthenticated):
        if transport.token is None and transport.token_file is None:
            return "give a token: --token, --token-file or FLOWLEDGER_TOKEN"
        return ""
    if transport.chose_plaintext_for_loopback(opts.engine):
        return (
            "is the engine running (flowctl up)? This was plaintext, as for any loopback "
            "address: an engine serving TLS needs --ca-file or --tls"
        )
    return ""


def one_line(exc: BaseException) -> str:
    """The message of an error as one line: what went wrong and, for flowledger errors, its
    code (the violations appended when the message does not already name them)."""
    if isinstance(exc, FlowledgerError):
        text = exc.message
        extra = [f"{v.field}: {v.description}" for v in exc.violations if v.field not in text]
        if extra:
            text = f"{text} ({'; '.join(extra)})"
        return f"{text} [{exc.code.value}]"
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        return f"bad YAML{where}: {problem}"
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the engine"
    return " ".join(str(exc).split()) or type(exc).__name__


class FlowctlGroup(click.Group):
    """The root group: turns every expected failure into ``Error: <one line>`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`flowctl ... | head`): stop quietly, as Unix tools do when
            # SIGPIPE ends them; what is still buffered goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        except (FlowledgerError, yaml.YAMLError, json.JSONDecodeError, OSError) as exc:
            raise click.ClickException(one_line(exc)) from None


@dataclass(frozen=True)
class DefinitionFile:
    name: str
    text: str
    format: Literal["json", "yaml"]
    document: dict[str, Any]


def load_definition(path: Path, name: str | None = None) -> DefinitionFile:
    """A YAML/JSON definition file; its name is ``name``, else the document's, else the stem."""
    text = path.read_text()
    fmt: Literal["json", "yaml"] = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        document = load_document(text, fmt)
    except DocumentError as exc:
        raise click.ClickException(f"{path}: the document {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("steps"), list):
        raise click.ClickException(f"{path}: expected a mapping with a 'steps' list")
    chosen = name or document.get("name") or path.stem
    if not isinstance(chosen, str):
        raise click.ClickException(f"{path}: 'name' must be a string")
    return DefinitionFile(chosen, text, fmt, document)


def parse_json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{option}: {one_line(exc)}") from None


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
)
