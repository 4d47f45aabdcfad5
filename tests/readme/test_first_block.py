"""The README's first block: exactly ``make demo`` then ``make test``, and the Makefile's two
targets run what the README says they do.

The demo itself runs in tests/demo/test_demo.py (the module the ``demo`` target runs, which the
README's first command therefore runs); ``make test`` is the command that runs this suite.
``make -n`` prints a target's recipe without running it.
"""

from __future__ import annotations

import subprocess

from tests.clients.python.flowctl.live import service_env
from tests.readme.blocks import REPO, readme_blocks


def test_first_block_is_the_two_commands() -> None:
    first = readme_blocks()[0]
    assert (first.info, first.content) == ("bash", "make demo\nmake test\n")


def recipe(target: str) -> list[str]:
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would make this one print
    # "Entering/Leaving directory" lines: run it as a top-level make.
    env = {k: v for k, v in service_env().items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.strip() for line in done.stdout.splitlines()]


def test_make_targets_run_what_the_readme_says() -> None:
    assert recipe("demo")[-1] == ".venv/bin/python -m flowctl.devserver.demo"
    # "drift check, lint, type check, the whole test suite", in that order, last in the recipe.
    assert recipe("test")[-6:] == [
        "scripts/check_generated.sh", ".venv/bin/ruff check .",
        ".venv/bin/lint-imports --no-cache", ".venv/bin/python scripts/check_import_cycles.py",
        ".venv/bin/mypy", ".venv/bin/pytest",
    ]
