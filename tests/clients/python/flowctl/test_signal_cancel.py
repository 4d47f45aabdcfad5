"""``flowctl signal`` and ``flowctl cancel`` against live services (both backends), and the
README's "Waits, signals, sagas and workers" blocks, run as written.

A block's first command is long-running (``flowctl run`` of a flow that waits, or a worker): it
runs in the background, as in a second terminal; the next lines run once the flow waits (or the
worker polls), with ``$FLOW`` the id the ``run`` printed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.clients.python.flowctl.live import FLOWCTL, REPO, Done, Live, flowctl, service_env
from tests.clients.python.flowctl.test_commands import assert_one_line_error, ok_json

APPROVAL = str(REPO / "examples" / "approval.yaml")
DEADLINE_S = 60.0
UNKNOWN_FLOW = "00000000-0000-4000-8000-000000000000"


class Background:
    """A long-running command whose output lines are collected by a thread."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv), cwd=REPO, env=env or service_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # stderr has its own reader, so that a full pipe never blocks the command.
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err_lines.extend(self.proc.stderr)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first output line matching ``pattern`` (bounded; fails if the command ends)."""
        deadline = time.monotonic() + DEADLINE_S
        with self._changed:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                assert self._reader.is_alive(), f"ended without {pattern!r}:\n{self.output}"
                left = deadline - time.monotonic()
                assert left > 0, f"no {pattern!r} within {DEADLINE_S} s:\n{self.output}"
                self._changed.wait(left)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def finish(self, interrupt: bool = False) -> Done:
        """Wait for the command to end (after SIGINT when ``interrupt``)."""
        if interrupt:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=DEADLINE_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in (self._reader, self._err_reader):
                reader.join(DEADLINE_S)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return Done(self.proc.returncode, self.output, "".join(self.err_lines))


def background_run(live: Live, ns: str, *args: str) -> tuple[Background, str]:
    """``flowctl run ...`` in the background; returns it and the id of the flow it started."""
    run = Background([FLOWCTL, "--engine", live.engine, "--namespace", ns, "run", *args])
    flow_id = run.wait_for(r"^flow (\S+) \(")[1]
    return run, flow_id


def until_waiting(live: Live, ns: str, flow_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        shown = ok_json(live.run("flows", "show", flow_id, "--json", namespace=ns))
        if shown["status"] == "waiting":
            return dict(shown)
        assert shown["status"] in ("queued", "running"), shown
        assert time.monotonic() < deadline, f"flow {flow_id} never waited"
        time.sleep(0.1)


def test_signal_resumes_a_waiting_flow(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "order 7"}')
    try:
        waiting = until_waiting(live_engine, ns, flow_id)
        assert waiting["variants"] == "ISFST"
        sent = ok_json(live_engine.run(
            "signal", flow_id, "approved", '{"message": "approved by ana"}', "--request-id",
            "ok-1", "--json", namespace=ns,
        ))  # fmt: skip
        assert sent["resumed"] is True
        assert sent["duplicate"] is False
    finally:
        done = run.finish()
    assert done.code == 0, done.out + done.err
    assert re.search(r"^variants:\s+ISFSTNFSFC$", done.out, re.M), done.out

    again = live_engine.run(
        "signal", flow_id, "approved", '{"message": "approved by ana"}', "--request-id", "ok-1",
        namespace=ns,
    )  # fmt: skip
    assert again.code == 0, again.err
    assert "already delivered" in again.out
    late = live_engine.run("signal", flow_id, "approved", namespace=ns)
    assert_one_line_error(late, "has ended (completed)", "FAILED_PRECONDITION")


def test_a_signal_before_the_wait_is_kept(live_engine: Live, ns: str, tmp_path: Path) -> None:
    # The flow first waits for another signal, so "go" arrives before its step waits, however
    # slow the machine (a timed pause here raced the signal under load).
    document = {"name": "early", "steps": [
        {"id": "pause", "type": "signal", "config": {"name": "first"}},
        {"id": "approve", "type": "signal", "config": {"name": "go"}},
    ]}  # fmt: skip
    path = tmp_path / "early.json"
    path.write_text(json.dumps(document))
    run, flow_id = background_run(live_engine, ns, str(path), "--input", "1")
    try:
        until_waiting(live_engine, ns, flow_id)  # on pause
        sent = live_engine.run("signal", flow_id, "go", '"early"', namespace=ns)
        assert sent.code == 0, sent.err
        assert "kept until a step waits for it" in sent.out
        first = live_engine.run("signal", flow_id, "first", '"now"', namespace=ns)
        assert first.code == 0, first.err
        assert "delivered: the waiting step resumes" in first.out
    finally:
        done = run.finish()
    assert done.code == 0, done.out + done.err
    # Two signals received while pause waited; approve then finishes at once on the kept one.
    assert re.search(r"^variants:\s+ISTNNFSFC$", done.out, re.M), done.out


def test_cancel_ends_a_waiting_flow(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "order 8"}')
    try:
        until_waiting(live_engine, ns, flow_id)
        cancelled = ok_json(live_engine.run(
            "cancel", flow_id, "--reason", "out of stock", "--wait", "--json", namespace=ns
        ))  # fmt: skip
    finally:
        done = run.finish()
    assert cancelled["already"] is False
    assert cancelled["view"]["status"] == "cancelled"
    assert cancelled["view"]["variants"] == "ISFSTAK"  # nothing to compensate
    assert done.code == 1, done.out + done.err  # `run` exits 1 for a flow that did not complete
    assert re.search(r"^status:\s+cancelled$", done.out, re.M), done.out

    events = ok_json(live_engine.run("events", flow_id, "--json", namespace=ns))
    requested = [e for e in events if e["variant"] == "A"]
    assert requested[0]["payload"]["reason"] == "out of stock"
    again = live_engine.run("cancel", flow_id, namespace=ns)
    assert again.code == 0, again.err
    assert "already cancelled" in again.out


def test_errors_are_one_line(live_engine: Live, ns: str) -> None:
    assert_one_line_error(
        live_engine.run("signal", UNKNOWN_FLOW, "go", "{bad", namespace=ns),
        "PAYLOAD_JSON: bad JSON",
    )
    assert_one_line_error(live_engine.run("signal", "not-a-uuid", "go", namespace=ns), "flow_id")
    assert_one_line_error(
        live_engine.run("signal", UNKNOWN_FLOW, "bad name!", namespace=ns), "name"
    )
    assert_one_line_error(live_engine.run("cancel", UNKNOWN_FLOW, namespace=ns), "NOT_FOUND")
    assert_one_line_error(flowctl("--engine", "127.0.0.1:1", "--timeout", "2", "cancel",
                                  UNKNOWN_FLOW))  # fmt: skip


# -- the README's blocks ---------------------------------------------------------------------


def readme_blocks() -> list[list[list[str]]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Waits, signals, sagas and workers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [
        [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
        for block in blocks
    ]


def local(argv: list[str]) -> list[str]:
    """A README command with this environment's interpreter for ``.venv/bin/python``."""
    return [sys.executable if a == ".venv/bin/python" else a for a in argv]


def test_the_section_shows_signal_cancel_worker_and_saga() -> None:
    blocks = readme_blocks()
    assert [[argv[:2] for argv in block] for block in blocks] == [
        [["flowctl", "run"], ["flowctl", "signal"]],
        [["flowctl", "run"], ["flowctl", "cancel"]],
        [[".venv/bin/python", "examples/worker.py"], ["flowctl", "run"]],
        [[".venv/bin/python", "examples/order_saga.py"]],
    ]


def test_readme_signal_and_cancel_blocks_run(live_engine: Live, ns: str) -> None:
    for block, variants, code in zip(readme_blocks()[:2], ("ISFSTNFSFC", "ISFSTAK"), (0, 1),
                                     strict=True):  # fmt: skip
        (_, _, *run_args), (_, *command) = block
        run, flow_id = background_run(live_engine, ns, *run_args)
        try:
            until_waiting(live_engine, ns, flow_id)
            args = [flow_id if a == "$FLOW" else a for a in command]
            acted = live_engine.run(*args, namespace=ns)
            assert acted.code == 0, acted.out + acted.err
        finally:
            done = run.finish()
        assert done.code == code, done.out + done.err
        assert re.search(rf"^variants:\s+{variants}$", done.out, re.M), done.out


def test_readme_worker_block_runs(live_engine: Live, ns: str) -> None:
    (worker_argv, (_, *run_args)) = readme_blocks()[2]
    env = dict(service_env(), FLOWLEDGER_ENGINE=live_engine.engine, FLOWLEDGER_NAMESPACE=ns)
    worker = Background(local(worker_argv), env)
    try:
        worker.wait_for(r"polls queue 'shout'")
        ran = live_engine.run(*run_args, namespace=ns)
        assert ran.code == 0, ran.out + ran.err
        assert re.search(r"^variants:\s+ISFSQFSFC$", ran.out, re.M), ran.out
        worker.wait_for(r"-> \{'message': 'HELLO, BO'\}")
    finally:
        stopped = worker.finish(interrupt=True)
    assert stopped.code == 0, stopped.out + stopped.err
    assert "stopped after 1 completed, 0 failed" in stopped.out


def test_readme_saga_block_runs() -> None:
    ((argv),) = readme_blocks()[3]
    done = subprocess.run(
        local(argv), cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
        timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "variants: ISFSFSXYVE" in done.stdout
    assert "stock of tea: 10" in done.stdout
