"""``flowctl up``: a local Postgres (data kept between runs), the store and the engine as
processes; serves ``flowctl run``; SIGINT to its process group (what Ctrl-C in a terminal
sends) stops everything and leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def up_argv(*extra: str) -> list[str]:
    return [
        FLOWCTL, "--engine", "127.0.0.1:0", "up", "--store-listen", "127.0.0.1:0",
        "--engine-metrics", "127.0.0.1:0", "--store-metrics", "127.0.0.1:0", *extra,
    ]


def up_env(data_home: Path) -> dict[str, str]:
    env = {k: v for k, v in service_env().items() if k != "DATABASE_URL"}
    env["XDG_DATA_HOME"] = str(data_home)
    return env


def up_once(data_home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``flowctl up`` expected to refuse: run to its exit."""
    return subprocess.run(
        up_argv(*extra), cwd=REPO, env=up_env(data_home), capture_output=True, text=True,
        timeout=DEADLINE_S, check=False,
    )


@contextlib.contextmanager
def up(
    data_home: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    """Start ``flowctl up`` on free ports; yield (process, engine address, printed pids)."""
    env = {**up_env(data_home), **(env_extra or {})}
    argv = up_argv(*extra)
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


def wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def test_a_second_up_on_the_same_data_dir_refuses_and_the_first_runs_on(tmp_path: Path) -> None:
    with up(tmp_path) as (proc, engine, pids):
        second = up_once(tmp_path)
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.strip().splitlines() == [
            f"Error: the data dir {tmp_path / 'flowledger' / 'pg'} is in use by flowctl up "
            f"pid {proc.pid}; stop it or use --data-dir"
        ]
        assert "postgres:" not in second.stdout  # it touched nothing
        assert all(alive(p) for p in pids)
        ran = flowctl("run", str(REPO / "examples" / "chem.yaml"), "--input", '{"order": 1}',
                      "--json", engine=engine)
        assert ran.code == 0, ran.err
        stop(proc, pids)


def test_a_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        for option in ("--store-listen", "--engine-listen", "--store-metrics"):
            refused = up_once(tmp_path, option, address)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert refused.stderr.strip().splitlines() == [
                f"Error: {address} ({option}) is in use by another process: stop it or "
                f"choose another port with {option}"
            ]
            assert "ready:" not in refused.stdout
    assert not (tmp_path / "flowledger").exists()  # no data dir was made


def test_an_engine_of_another_up_is_not_taken_for_its_own(tmp_path: Path) -> None:
    with up(tmp_path / "first") as (proc, engine, pids):
        refused = up_once(tmp_path / "second", "--engine-listen", engine)
        assert refused.returncode == 1
        assert f"{engine} (--engine-listen) is in use" in refused.stderr
        assert "ready:" not in refused.stdout
        stop(proc, pids)


@pytest.mark.parametrize("victim", ["engine", "store", "postgres"])
def test_when_a_service_dies_up_says_so_and_stops_the_rest(tmp_path: Path, victim: str) -> None:
    with up(tmp_path) as (proc, _engine, pids):
        postgres_pid, store_pid, engine_pid = pids
        killed = {"postgres": postgres_pid, "store": store_pid, "engine": engine_pid}[victim]
        os.kill(killed, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 1, rest
        said = {
            "engine": f"the engine service (pid {engine_pid}) was killed by SIGKILL",
            "store": f"the store service (pid {store_pid}) was killed by SIGKILL",
            "postgres": f"postgres (pid {postgres_pid}) is gone",
        }[victim]
        assert f"{said}: stopping the rest" in rest
        assert f"Error: {said}; everything else stopped" in rest
        assert "Traceback" not in rest
        wait_gone(pids)


def test_own_step_types_under_up_and_a_raising_step_s_traceback_in_its_log(
    tmp_path: Path,
) -> None:
    """The README's ``ENGINE_STEP_PLUGINS=my_steps:install PYTHONPATH=. flowctl up``; a step
    that raises fails with ``ValueError: reason`` and the engine logs where it raised."""
    plugins = {
        "ENGINE_STEP_PLUGINS": "tests.clients.python.flowctl.exploding_steps:install",
        "PYTHONPATH": str(REPO),
    }
    document = tmp_path / "explode.json"
    document.write_text(json.dumps({"name": "explode", "steps": [
        {"id": "pack", "type": "test.explode", "config": {"order": 7}},
    ]}))  # fmt: skip
    with up(tmp_path, env_extra=plugins) as (proc, engine, pids):
        ran = flowctl("run", str(document), "--json", engine=engine)
        assert ran.code == 1, ran.err
        flow_id = json.loads(ran.out)["flow_id"]
        shown = flowctl("flows", "show", flow_id, engine=engine)
        assert "failed at step pack: ValueError: order 7 cannot be packed" in shown.out
        rest = stop(proc, pids)
    assert (
        f"step pack (type test.explode) of flow {flow_id} in namespace default raised on "
        "attempt 1" in rest
    ), rest
    assert "Traceback (most recent call last):" in rest
    assert "in _deep_inside" in rest
    assert "ValueError: order 7 cannot be packed" in rest
