"""``flowctl up``: a local Postgres (data kept between runs), the store and the engine as
processes; serves ``flowctl run``; SIGINT to its process group (what Ctrl-C in a terminal
sends) stops everything and leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.clients.python.flowctl.live import FLOWCTL, REPO, flowctl, service_env
from tests.demo.test_demo import CHEM_ORDER_1_FLOW_FINGERPRINT

DEADLINE_S = 120.0
_PID = re.compile(r"pid (\d+)")


def alive(pid: int) -> bool:
    """True while /proc has the process and it is not a zombie (exited, waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


@contextlib.contextmanager
def up(data_home: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    """Start ``flowctl up`` on free ports; yield (process, engine address, printed pids)."""
    env = {k: v for k, v in service_env().items() if k != "DATABASE_URL"}
    env["XDG_DATA_HOME"] = str(data_home)
    argv = [
        FLOWCTL, "--engine", "127.0.0.1:0", "up", "--store-listen", "127.0.0.1:0",
        "--engine-metrics", "127.0.0.1:0", "--store-metrics", "127.0.0.1:0", *extra,
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while not (lines and lines[-1].startswith("ready:")):
            line = proc.stdout.readline()  # the process prints "ready:" or exits (EOF)
            assert line, "flowctl up exited before ready:\n" + "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        text = "".join(lines)
        assert "plaintext gRPC on loopback only" in text
        assert re.search(r"metrics http://127\.0\.0\.1:\d+/metrics", text)
        engine = lines[-1].split("--engine ")[1].split()[0]
        yield proc, engine, [int(p) for p in _PID.findall(text)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only reached when a check above failed
        proc.wait(DEADLINE_S)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(proc: subprocess.Popen[str], pids: list[int]) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, rest
    deadline = time.monotonic() + DEADLINE_S
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)
    return rest


def test_up_serves_run_keeps_data_and_stops_everything_on_sigint(tmp_path: Path) -> None:
    with up(tmp_path) as (proc, engine, pids):
        assert len(pids) == 3  # postgres, store, engine
        ran = flowctl("run", str(REPO / "examples" / "chem.yaml"), "--input", '{"order": 1}',
                      "--json", engine=engine)
        assert ran.code == 0, ran.err
        flow_id = json.loads(ran.out)["flow_id"]
        assert json.loads(ran.out)["flow_fingerprint"] == CHEM_ORDER_1_FLOW_FINGERPRINT
        rest = stop(proc, pids)
    assert "engine:   stopped (exit 0)" in rest
    assert "store:    stopped (exit 0)" in rest
    assert "flowctl up: everything stopped" in rest

    with up(tmp_path) as (proc, engine, pids):  # the same data directory: the flow is there
        listed = flowctl("flows", "ls", "--json", engine=engine)
        assert [f["flow_id"] for f in json.loads(listed.out)] == [flow_id]
        stop(proc, pids)

    with up(tmp_path, "--fresh") as (proc, engine, pids):
        listed = flowctl("flows", "ls", "--json", engine=engine)
        assert json.loads(listed.out) == []
        stop(proc, pids)


def test_up_refuses_a_non_loopback_address() -> None:
    done = flowctl("--engine", "0.0.0.0:50052", "up")
    assert done.code != 0
    assert "not a loopback address" in done.err
    assert "Traceback" not in done.err
