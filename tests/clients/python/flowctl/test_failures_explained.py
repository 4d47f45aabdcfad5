"""Failures and waits explain themselves in ``run``, ``flows show``, ``events`` and ``watch``:
``error_type: reason`` wherever a failure is shown, the command that ends a wait, cancel reasons,
a branch's params, timestamps and durations, step outputs; and a ``run`` that stops waiting
says the flow goes on (live services over both backends, the real ``flowctl`` executable)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from flowctl.devserver.postgres import free_port
from tests.clients.python.flowctl.live import REPO, Live
from tests.clients.python.flowctl.test_commands import ok_json
from tests.clients.python.flowctl.test_signal_cancel import APPROVAL, background_run, until_waiting

CHEM = str(REPO / "examples" / "chem.yaml")
CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


def _closed_port_flow(tmp_path: Path) -> tuple[Path, str]:
    """A flow whose one http step calls a loopback port nothing listens on (``flowctl up``
    and these services allow loopback: ENGINE_EGRESS_ALLOW)."""
    url = f"http://127.0.0.1:{free_port()}/orders/7"
    path = tmp_path / "closed.json"
    path.write_text(json.dumps({"name": "closed", "steps": [
        {"id": "fetch", "type": "http", "config": {"url": url, "retries": 0}},
    ]}))  # fmt: skip
    return path, url


def test_a_failed_step_says_why_everywhere(live_engine: Live, ns: str, tmp_path: Path) -> None:
    path, url = _closed_port_flow(tmp_path)
    why = f"HttpConnectionError: GET {url}: connection failed"
    ran = live_engine.run("run", str(path), namespace=ns)
    assert ran.code == 1, ran.out + ran.err
    assert "EgressDenied" not in ran.out  # the configured allow list reached the runner
    assert f"failed    fetch: {why}" in ran.out
    assert re.search(rf"^failed at step fetch: {re.escape(why)}", ran.out, re.M), ran.out
    flow_id = re.search(r"^flow (\S+) \(", ran.out, re.M)[1]  # type: ignore[index]

    shown = live_engine.run("flows", "show", flow_id, namespace=ns)
    assert re.search(rf"^failed at step fetch: {re.escape(why)}", shown.out, re.M), shown.out
    events = live_engine.run("events", flow_id, namespace=ns)
    [failed] = [line for line in events.out.splitlines() if " step_failed " in line]
    assert re.search(rf"^3\s+{CLOCK}\s+X\s+step_failed\s+fetch\s+1\s+{re.escape(why)}", failed)
    [flow_failed] = [line for line in events.out.splitlines() if " flow_failed " in line]
    assert why in flow_failed
    watched = live_engine.run("watch", flow_id, namespace=ns)
    assert why in watched.out
    assert watched.out.rstrip().endswith(f"flow {flow_id}: failed")


def test_a_waiting_flow_says_what_ends_the_wait_and_a_cancel_who_and_why(
    live_engine: Live, ns: str
) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "o 3"}')
    try:
        until_waiting(live_engine, ns, flow_id)
        shown = live_engine.run("flows", "show", flow_id, namespace=ns)
        command = shlex.join(["flowctl", "signal", flow_id, "approved", "<JSON>"])
        assert f"step approve waits for signal 'approved': {command}" in shown.out, shown.out
        cancelled = live_engine.run(
            "cancel", flow_id, "--reason", "order withdrawn", "--wait", namespace=ns
        )
        assert cancelled.code == 0, cancelled.out + cancelled.err
        assert "cancel requested by flowctl: order withdrawn" in cancelled.out
    finally:
        run.finish()
    events = live_engine.run("events", flow_id, namespace=ns).out
    [requested] = [line for line in events.splitlines() if " flow_cancel_requested " in line]
    assert requested.rstrip().endswith("by flowctl: order withdrawn")
    [ended] = [line for line in events.splitlines() if " flow_cancelled " in line]
    assert ended.rstrip().endswith("order withdrawn")


def test_a_task_wait_names_its_queue(live_engine: Live, ns: str, tmp_path: Path) -> None:
    queue = f"q-{ns}"
    path = tmp_path / "tasked.json"
    path.write_text(json.dumps({"name": "tasked", "steps": [
        {"id": "work", "type": "task", "config": {"queue": queue}},
    ]}))  # fmt: skip
    run, flow_id = background_run(live_engine, ns, str(path))
    try:
        until_waiting(live_engine, ns, flow_id)
        shown = live_engine.run("flows", "show", flow_id, namespace=ns).out
        assert f"step work waits for a worker on task queue {queue!r}" in shown, shown
    finally:
        assert live_engine.run("cancel", flow_id, "--wait", namespace=ns).code == 0
        run.finish()


def test_run_that_stops_waiting_says_the_flow_goes_on(live_engine: Live, ns: str) -> None:
    ran = live_engine.run("run", APPROVAL, "--input", '{"name": "o 4"}', "--within", "0.5",
                          namespace=ns)  # fmt: skip
    assert ran.code == 1, ran.out + ran.err
    flow_id = re.search(r"^flow (\S+) \(", ran.out, re.M)[1]  # type: ignore[index]
    assert "timed out waiting for the engine" not in ran.err
    [line] = ran.err.strip().splitlines()
    assert re.fullmatch(
        rf"Error: the flow is \w+ after --within 0\.5 s; flow {flow_id} keeps running in the "
        rf"engine: follow it with `flowctl watch {flow_id}`, stop it with "
        rf"`flowctl cancel {flow_id}`",
        line,
    ), line
    until_waiting(live_engine, ns, flow_id)  # it did go on
    assert live_engine.run("cancel", flow_id, "--wait", namespace=ns).code == 0


def test_interrupted_run_says_the_flow_goes_on(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "o 5"}')
    until_waiting(live_engine, ns, flow_id)
    done = run.finish(interrupt=True)
    assert done.code == 130, done.out + done.err
    assert f"interrupted: flow {flow_id} keeps running in the engine" in done.err
    assert "Traceback" not in done.err
    assert until_waiting(live_engine, ns, flow_id)["status"] == "waiting"
    assert live_engine.run("cancel", flow_id, "--wait", namespace=ns).code == 0


def test_times_durations_outputs_and_a_branch_s_params(live_engine: Live, ns: str) -> None:
    ran = ok_json(live_engine.run("run", CHEM, "--input", '{"order": 1}', "--json",
                                  namespace=ns))  # fmt: skip
    flow_id = ran["flow_id"]
    shown = live_engine.run("flows", "show", flow_id, "--outputs", namespace=ns)
    assert shown.code == 0, shown.err
    assert re.search(r"^ended:\s+\S+ \(took \d+(\.\d)? m?s\)$", shown.out, re.M), shown.out
    assert re.search(rf"^seed\s+finished_ok\s+1\s+{CLOCK}\s+\d+(\.\d)? m?s\s+[0-9a-f]{{64}}$",
                     shown.out, re.M), shown.out  # fmt: skip
    assert re.search(r'^output of seed \([0-9a-f]{16}\.\.\.\):\n  \{\n    "text": "Hola"\n  \}$',
                     shown.out, re.M), shown.out  # fmt: skip
    assert re.search(r'^output of print_and_count .*:\n  \{\n    "count": 4\n  \}$',
                     shown.out, re.M), shown.out  # fmt: skip
    as_json = ok_json(live_engine.run("flows", "show", flow_id, "--outputs", "--json",
                                      namespace=ns))  # fmt: skip
    assert as_json["outputs"]["seed"] == [{"text": "Hola"}]
    assert as_json["outputs"]["split"] == [
        {"index": i, "text": c} for i, c in enumerate("Hola")
    ]

    branched = live_engine.run("branch", flow_id, "--at", "seed", "--param", "seed.text=Adios",
                               namespace=ns)  # fmt: skip
    assert branched.code == 0, branched.out + branched.err
    assert re.search(
        rf"^branch of flow {flow_id} at step seed \(its events up to version 1\), "
        r'params \{"seed": \{"text": "Adios"\}\}$',
        branched.out, re.M,
    ), branched.out


def test_terminate_ends_a_flow_at_once_without_compensations(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    """Issue 19's terminate: a waiting flow whose first step has a compensation ends CANCELLED
    by one call, recorded with who and why, and no compensation runs (a cancel would run it)."""
    path = tmp_path / "saga.json"
    path.write_text(json.dumps({"name": "saga", "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "x"},
         "compensate": {"type": "hello.shout"}},
        {"id": "approve", "type": "signal", "config": {"name": "approved"}},
    ]}))  # fmt: skip
    run, flow_id = background_run(live_engine, ns, str(path))
    try:
        until_waiting(live_engine, ns, flow_id)
        done = live_engine.run("terminate", flow_id[:13], "--reason", "stuck", namespace=ns)
        assert done.code == 0, done.err
        assert done.out.startswith(f"flow {flow_id}: terminated (version ")
    finally:
        run.finish()
    shown = live_engine.run("flows", "show", flow_id, namespace=ns).out
    assert re.search(r"^status:\s+cancelled$", shown, re.M), shown
    assert "terminated by flowctl: stuck (no compensation ran)" in shown
    events = ok_json(live_engine.run("events", flow_id, "--json", namespace=ns))
    kinds = [e["type"] for e in events]
    assert "compensation_started" not in kinds
    assert kinds[-1] == "flow_cancelled"
    assert events[-1]["payload"] == {"kind": "FlowCancelled", "reason": "stuck",
                                     "terminated_by": "flowctl"}  # fmt: skip
    again = live_engine.run("terminate", flow_id, namespace=ns)
    assert again.out.startswith(f"flow {flow_id}: was already cancelled")
    assert live_engine.run("verify", flow_id, namespace=ns).code == 0
    finished = ok_json(live_engine.run("run", CHEM, "--json", namespace=ns))["flow_id"]
    refused = live_engine.run("terminate", finished, namespace=ns)
    assert refused.code == 1
    assert "FAILED_PRECONDITION" in refused.err
    assert "has ended (completed)" in refused.err
