"""``flowctl``: the command line of flowledger (``flowctl --help``).

One module per command group; every command talks to an engine through the Python SDK
(:mod:`flowledger.client`), except ``up``, which starts one (:mod:`flowctl.devserver`).
"""

from __future__ import annotations

import os
from pathlib import Path

# Before gRPC loads: its core logs a failed TLS handshake (a wrong CA, plaintext against TLS) as
# an INFO line on stderr, and flowctl already reports that failure as its one-line error.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click

from flowctl._app import DEFAULT_ENGINE, DEFAULT_NAMESPACE, FlowctlGroup, settings_from_params
from flowctl.completion import completion
from flowctl.defs import defs
from flowctl.flows import branch, events, flows, verify, watch
from flowctl.interventions import cancel, signal, terminate
from flowctl.run import run
from flowctl.up import up


@click.group(cls=FlowctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--engine", envvar="FLOWLEDGER_ENGINE", default=DEFAULT_ENGINE, show_default=True,
    show_envvar=True, help="Engine gRPC address (host:port).",
)
@click.option(
    "--namespace", "-n", envvar="FLOWLEDGER_NAMESPACE", default=DEFAULT_NAMESPACE,
    show_default=True, show_envvar=True, help="Namespace of flows and definitions.",
)
@click.option(
    "--timeout", default=30.0, show_default=True, help="Seconds each engine call may take."
)
@click.option(
    "--token", envvar="FLOWLEDGER_TOKEN", show_envvar=True, default=None,
    help="Bearer token sent with every call (prefer the variable or --token-file: "
    "a command line is visible to other users).",
)
@click.option(
    "--token-file", envvar="FLOWLEDGER_TOKEN_FILE", show_envvar=True, default=None,
    type=click.Path(dir_okay=False, path_type=Path), help="Read the token from this file.",
)
@click.option(
    "--ca-file", envvar="FLOWLEDGER_CA_FILE", show_envvar=True, default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM CA that signed the engine's certificate (implies TLS) [default: system CAs].",
)
@click.option(
    "--client-cert", envvar="FLOWLEDGER_CLIENT_CERT", show_envvar=True, default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM client certificate, for an engine that requires mutual TLS (with --client-key).",
)
@click.option(
    "--client-key", envvar="FLOWLEDGER_CLIENT_KEY", show_envvar=True, default=None,
    type=click.Path(dir_okay=False, path_type=Path), help="Its PEM private key.",
)
@click.option(
    "--server-name", envvar="FLOWLEDGER_SERVER_NAME", show_envvar=True, default=None,
    help="Name to expect in the engine's certificate when --engine does not carry it "
    "(e.g. through a port-forward).",
)
@click.option(
    "--tls/--plaintext", default=None, envvar="FLOWLEDGER_TLS", show_envvar=True,
    help="[default: TLS, except plaintext to a loopback --engine when no TLS option is "
    "given, as `flowctl up` serves]",
)
@click.version_option(package_name="flowledger")
@click.pass_context
def cli(
    ctx: click.Context,
    engine: str,
    namespace: str,
    timeout: float,
    token: str | None,
    token_file: Path | None,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    server_name: str | None,
    tls: bool | None,
) -> None:
    """flowledger: durable, deterministic workflows. Start with `flowctl up`, then
    `flowctl run examples/chem.yaml`.

    Connection: TLS with the system's CAs (or --ca-file) and a bearer token (--token) for a
    secured engine; plaintext without a token for `flowctl up` on loopback (docs/security.md).

    FLOW_ID, wherever a command takes one: a flow's id or any unique start of it, as for git
    commits (`flowctl flows show 9dea`). Completion: `flowctl completion --help`.
    """
    ctx.obj = settings_from_params(ctx.params)


for command in (
    up, run, flows, events, watch, branch, verify, signal, cancel, terminate, defs, completion,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="flowctl")


__all__ = ["cli", "main"]
