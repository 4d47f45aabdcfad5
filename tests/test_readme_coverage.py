"""Every fenced code block of README.md is run by a named test, and every claim names a real block.

The rule:

- A block is identified by its info string and its first line (``CLAIMS`` below): readable, and
  a changed first line makes this test fail until someone re-reads the claim.
- A ```text block is not executable (a diagram, a sample of output) and must not be claimed.
  Every other block, including one without an info string, must be claimed by at least one test.
- A claim names ``path::test`` (a Python test function, looked up in the file's syntax tree) or
  ``path::title`` for the Node client's tests (the title must occur in the file). At least one
  claim of each block is in a file that mentions the README: it reads the block from there
  rather than from a copy.
- Checked both ways: a block without a claim fails, and a claim for a block that no longer
  exists fails.

The first block is the issue's two commands. ``make demo`` is run by the demo test (the module the
Makefile's ``demo`` target runs) and ``make test`` is the command that runs this suite, this test
included; tests/readme/test_first_block.py checks that both targets run what the README says.
"""

from __future__ import annotations

import ast

from tests.readme.blocks import README, REPO, readme_blocks

NOT_EXECUTABLE = "text"

PYTHON_BLOCK = (
    '"""hello.py: run it with `.venv/bin/python hello.py` while `flowctl up` runs; run it again."""'
)
SIGNAL_CANCEL = "tests/clients/python/flowctl/test_signal_cancel.py"
SERVICES = "tests/readme/test_services_blocks.py"

CLAIMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("bash", "make demo"): (
        "tests/demo/test_demo.py::test_demo_runs_a_flow_end_to_end_and_stops_everything",
        "tests/readme/test_first_block.py::test_first_block_is_the_two_commands",
        "tests/readme/test_first_block.py::test_make_targets_run_what_the_readme_says",
        # `make test` itself: the suite this file belongs to.
    ),
    ("python", PYTHON_BLOCK): (
        "tests/engine_service/api/test_readme.py::test_readme_python_examples_run",
    ),
    ("yaml", "name: hello"): (
        "tests/readme/test_yaml_block.py::test_yaml_block_runs_with_the_python_fingerprint",
        "tests/readme/test_yaml_block.py::test_yaml_block_is_examples_hello",
    ),
    (
        "bash",
        "flowctl up        # Postgres, store and engine on loopback until Ctrl-C; "
        "then, in another terminal:",
    ): (
        "tests/clients/python/flowctl/test_readme_commands.py::test_every_readme_command_runs",
        # The block's first line, `flowctl up`, runs there (it cannot run beside the others).
        "tests/clients/python/flowctl/test_up.py::test_up_serves_run_keeps_data_and_stops_everything_on_sigint",
    ),
    ("bash", """flowctl run examples/approval.yaml --input '{"name": "order 7"}'   """
             "# stops at its approve step"): (
        f"{SIGNAL_CANCEL}::test_readme_signal_and_cancel_blocks_run",
    ),
    ("bash", """flowctl run examples/approval.yaml --input '{"name": "order 8"}'   """
             "# waits again"): (
        f"{SIGNAL_CANCEL}::test_readme_signal_and_cancel_blocks_run",
    ),
    ("bash", ".venv/bin/python examples/worker.py                       "
             "# polls the queue `shout` until Ctrl-C"): (
        f"{SIGNAL_CANCEL}::test_readme_worker_block_runs",
    ),
    ("sh", "node clients/node/dist/examples/worker.js                 "
           "# polls the queue `shout` until Ctrl-C"): (
        # Run by `npm test` in clients/node, not by pytest.
        "clients/node/test/readme.test.ts::the README's Node worker block",
    ),
    ("bash", ".venv/bin/python examples/order_saga.py"): (
        f"{SIGNAL_CANCEL}::test_readme_saga_block_runs",
    ),
    ("bash", "grpcurl -plaintext 127.0.0.1:50052 list"): (
        "tests/engine_service/api/test_grpcurl.py::test_readme_grpcurl_lines_run",
    ),
    ("bash", "FLOWLEDGER_INSECURE=1 DATABASE_URL=postgresql://user@host/db "
             ".venv/bin/python -m store_service"): (
        f"{SERVICES}::test_services_run_separately_as_written",
    ),
    ("bash", "FLOWLEDGER_INSECURE=1 ENGINE_AUTH_DISABLED=1 STORE_ADDR=127.0.0.1:50051 "
             ".venv/bin/python -m engine_service"): (
        f"{SERVICES}::test_services_run_separately_as_written",
    ),
    ("bash", """flowctl run examples/hello.yaml --input '{"name": "ana"}'"""): (
        f"{SERVICES}::test_services_run_separately_as_written",
    ),
}


def claim_exists(claim: str) -> str | None:
    """Why ``claim`` names no test, or None when it does."""
    path, _, name = claim.partition("::")
    file = REPO / path
    if not file.is_file():
        return f"{claim}: no file {path}"
    text = file.read_text()
    if file.suffix == ".py":
        functions = {
            node.name for node in ast.parse(text).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }  # fmt: skip
        if name not in functions or not name.startswith("test_"):
            return f"{claim}: no test function {name} in {path}"
    elif name not in text:
        return f"{claim}: no test titled {name!r} in {path}"
    return None


def test_every_block_is_claimed() -> None:
    unclaimed = [
        f"README.md:{b.line}: ```{b.info} {b.first_line!r}"
        for b in readme_blocks() if b.info != NOT_EXECUTABLE and b.key not in CLAIMS
    ]  # fmt: skip
    assert not unclaimed, (
        "README blocks that no test runs (run them in a test and add them to CLAIMS, or mark a "
        "diagram or an output sample ```text):\n" + "\n".join(unclaimed)
    )


def test_every_claim_names_a_block() -> None:
    keys = {b.key for b in readme_blocks()}
    stale = [f"```{info} {first!r}" for info, first in CLAIMS if (info, first) not in keys]
    assert not stale, "CLAIMS for blocks the README no longer has:\n" + "\n".join(stale)


def test_text_blocks_are_not_claimed() -> None:
    assert all(info != NOT_EXECUTABLE for info, _ in CLAIMS)


def test_blocks_are_told_apart() -> None:
    keys = [b.key for b in readme_blocks() if b.info != NOT_EXECUTABLE]
    assert len(keys) == len(set(keys)), "two README blocks share a language and first line"


def test_every_claim_names_a_test() -> None:
    problems = [p for claims in CLAIMS.values() for c in claims if (p := claim_exists(c))]
    assert not problems, "\n".join(problems)


def test_every_block_is_read_from_the_readme() -> None:
    def reads_readme(claim: str) -> bool:
        file = REPO / claim.partition("::")[0]
        return file.is_file() and "README" in file.read_text()

    unread = [key for key, claims in CLAIMS.items() if not any(map(reads_readme, claims))]
    assert not unread, f"blocks no claiming test reads from the README: {unread}"


def test_the_readme_says_what_it_is_and_draws_it() -> None:
    # The issue: what flowledger is (a paragraph and a diagram), then the two commands.
    text = README.read_text()
    assert "workflow engine" in text.split("```", 1)[0]
    diagram = readme_blocks()[1]  # right after the two commands
    assert diagram.info == NOT_EXECUTABLE
    for part in ("engine_service", "store_service", "PostgreSQL", "worker", "DATABASE_URL"):
        assert part in diagram.content
