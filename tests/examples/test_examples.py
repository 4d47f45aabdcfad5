"""Every file in examples/ runs and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.clients.python.flowctl.live import REPO, Live, service_env
from tests.clients.python.flowctl.test_signal_cancel import (
    Background,
    background_run,
    until_waiting,
)
from tests.demo.test_demo import CHEM_ORDER_1_FLOW_FINGERPRINT

EXAMPLES = REPO / "examples"
# The builder example's flow (its three functions, params and input): pinned so that a change of
# the fingerprint scheme or of the example shows up here.
WORDS_FLOW_FINGERPRINT = "0cb172cde1f72e4e539efce12e78e39fbefcc1e237ba8edd2236b2080787d1cc"


def run_script(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_example_has_a_test() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if not p.name.startswith(".")) == [
        # http.yaml runs against a local server in tests/engine_service/steps/test_runners_http.py.
        "approval.yaml", "branching.py", "chem.yaml", "hello.yaml", "http.yaml",
        "order_saga.py", "python_builder.py", "task.yaml", "worker.py",
    ]


def test_chem_yaml(live_engine: Live, ns: str) -> None:
    done = live_engine.run(
        "run", str(EXAMPLES / "chem.yaml"), "--input", '{"order": 1}', namespace=ns
    )
    assert done.code == 0, done.err
    assert re.search(r"^variants:\s+ISFSFSFC$", done.out, re.M), done.out
    assert re.search(rf"^flow fingerprint:\s+{CHEM_ORDER_1_FLOW_FINGERPRINT}$", done.out, re.M)


def test_hello_yaml(live_engine: Live, ns: str) -> None:
    done = live_engine.run(
        "run", str(EXAMPLES / "hello.yaml"), "--input", '{"name": "ana"}', namespace=ns
    )
    assert done.code == 0, done.err
    assert re.search(r"^variants:\s+ISFSFSFC$", done.out, re.M), done.out
    assert re.search(r"^flow fingerprint:\s+[0-9a-f]{64}$", done.out, re.M), done.out


def test_python_builder() -> None:
    out = run_script("python_builder.py")
    assert "variants:         ISFSFSFC" in out
    assert f"flow fingerprint: {WORDS_FLOW_FINGERPRINT}" in out


def test_branching() -> None:
    lines = run_script("branching.py").splitlines()
    assert re.fullmatch(r"main flow \S+: ISFSFSF", lines[0])
    assert re.fullmatch(r"branch at v5 \S+: ISFSFSF", lines[1])  # fork at v5, then step3b
    assert re.fullmatch(r"sub-branch \S+: ISFSFSFSF", lines[2])
    assert re.fullmatch(r"deleted branch \S+: deleted=True", lines[3])
    assert lines[4].endswith(": ISFSF (generation 1)")


def test_order_saga() -> None:
    lines = run_script("order_saga.py").splitlines()
    assert [line.split()[1:3] for line in lines[7:9]] == [
        ["Y", "compensation_started"], ["V", "compensation_finished"],
    ]  # the reservation released, after the payment failed
    assert lines[-3:] == [
        "variants: ISFSFSXYVE", "status:   failed", "stock of tea: 10 (3 reserved, then released)",
    ]


def test_approval_yaml(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(
        live_engine, ns, str(EXAMPLES / "approval.yaml"), "--input", '{"name": "order 7"}'
    )
    try:
        until_waiting(live_engine, ns, flow_id)
        signalled = live_engine.run(
            "signal", flow_id, "approved", '{"message": "approved by ana"}', namespace=ns
        )
        assert signalled.code == 0, signalled.err
    finally:
        done = run.finish()
    assert done.code == 0, done.out + done.err
    assert re.search(r"^variants:\s+ISFSTNFSFC$", done.out, re.M), done.out
    shown = live_engine.run("flows", "show", flow_id, "--json", namespace=ns)
    assert '"status": "completed"' in shown.out


def test_worker_and_task_yaml(live_engine: Live, ns: str) -> None:
    worker = Background(
        [sys.executable, str(EXAMPLES / "worker.py"), "--engine", live_engine.engine,
         "--namespace", ns],
        service_env(),
    )  # fmt: skip
    try:
        worker.wait_for("polls queue")
        done = live_engine.run(
            "run", str(EXAMPLES / "task.yaml"), "--input", '{"name": "bo"}', namespace=ns
        )
        assert done.code == 0, done.out + done.err
        assert re.search(r"^variants:\s+ISFSQFSFC$", done.out, re.M), done.out
    finally:
        stopped = worker.finish(interrupt=True)
    assert stopped.code == 0, stopped.err
    assert "-> {'message': 'HELLO, BO'}" in stopped.out
