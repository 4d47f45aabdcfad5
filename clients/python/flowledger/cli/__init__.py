"""``flowctl``: the command line of flowledger (``flowctl --help``).

One module per command group; every command talks to an engine through the Python SDK
(:mod:`flowledger.client`), except ``up``, which starts one (:mod:`flowledger.devserver`).
"""

from __future__ import annotations

import click

from flowledger.cli._app import DEFAULT_ENGINE, DEFAULT_NAMESPACE, FlowctlGroup, Settings
from flowledger.cli.defs import defs
from flowledger.cli.flows import branch, events, flows, verify, watch
from flowledger.cli.interventions import cancel, signal
from flowledger.cli.run import run
from flowledger.cli.up import up


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
@click.version_option(package_name="flowledger")
@click.pass_context
def cli(ctx: click.Context, engine: str, namespace: str, timeout: float) -> None:
    """flowledger: durable, deterministic workflows. Start with `flowctl up`, then
    `flowctl run examples/chem.yaml`."""
    ctx.obj = Settings(engine, namespace, timeout)


for command in (up, run, flows, events, watch, branch, verify, signal, cancel, defs):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="flowctl")


__all__ = ["cli", "main"]
