"""``--help`` on every command and group, through click's runner (no services needed)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from flowctl import cli
from tests.clients.python.flowctl.live import flowctl


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


ALL = [(), *command_paths(cli)]
EXPECTED = {
    "up", "run", "flows", "flows ls", "flows show", "events", "watch", "branch", "verify",
    "signal", "cancel", "terminate", "completion",
    "defs", "defs create", "defs publish", "defs archive", "defs rollback", "defs ls",
    "defs show",
}


def test_every_expected_command_exists() -> None:
    assert {" ".join(p) for p in ALL if p} == EXPECTED


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "flowctl")
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="flowctl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: flowctl {' '.join(path)}".rstrip())


def test_the_installed_console_script_answers_help() -> None:
    done = flowctl("--help")
    assert done.code == 0, done.err
    assert "run" in done.out
    assert "up" in done.out
