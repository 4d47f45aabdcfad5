"""``flowctl flows show`` says what a waiting step waits for, which step a cancel stopped, and why
an ended flow has no fingerprint (live services, both backends; the statuses come from the
engine's DescribeFlow, so every client sees them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.clients.python.flowctl.live import Live
from tests.clients.python.flowctl.test_commands import ok_json
from tests.clients.python.flowctl.test_signal_cancel import APPROVAL, background_run, until_waiting


def _row(out: str, step_id: str) -> str:
    [line] = [line for line in out.splitlines() if line.split()[:1] == [step_id]]
    return line


def test_a_waiting_then_cancelled_flow_is_shown_as_such(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "order 9"}')
    try:
        until_waiting(live_engine, ns, flow_id)
        shown = live_engine.run("flows", "show", flow_id, namespace=ns)
        assert shown.code == 0, shown.err
        assert re.search(r"\bwaiting \(signal approved, until \S+\)", _row(shown.out, "approve"))
        assert re.search(r"^flow fingerprint:\s+\(none yet\)$", shown.out, re.M), shown.out
        as_json = ok_json(live_engine.run("flows", "show", flow_id, "--json", namespace=ns))
        [approve] = [s for s in as_json["steps"] if s["step_id"] == "approve"]
        assert approve["status"] == "waiting"
        assert approve["wait"]["signal_name"] == "approved"

        cancelled = live_engine.run("cancel", flow_id, "--wait", namespace=ns)
        assert cancelled.code == 0, cancelled.out + cancelled.err
    finally:
        run.finish()
    shown = live_engine.run("flows", "show", flow_id, namespace=ns)
    assert re.search(r"^approve\s+cancelled\s", _row(shown.out, "approve")), shown.out
    assert re.search(r"^announce\s+pending\s", _row(shown.out, "announce")), shown.out
    assert re.search(r"^flow fingerprint:\s+\(none: flow cancelled\)$", shown.out, re.M)


def test_timer_and_task_waits_and_a_failed_flow(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    queue = f"q-{ns}"
    document = {"name": "waits", "steps": [
        {"id": "pause", "type": "wait", "config": {"seconds": 3600}},
    ]}  # fmt: skip
    tasked = {"name": "tasked", "steps": [
        {"id": "work", "type": "task", "config": {"queue": queue}},
    ]}  # fmt: skip
    shown = {}
    for name, doc in (("waits", document), ("tasked", tasked)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        run, flow_id = background_run(live_engine, ns, str(path))
        try:
            until_waiting(live_engine, ns, flow_id)
            shown[name] = live_engine.run("flows", "show", flow_id, namespace=ns).out
            assert live_engine.run("cancel", flow_id, "--wait", namespace=ns).code == 0
        finally:
            run.finish()
    assert re.search(r"^pause\s+waiting \(until \S+\)\s", _row(shown["waits"], "pause"))
    assert re.search(rf"^work\s+waiting \(task on queue {queue}\)\s", _row(shown["tasked"], "work"))

    failing = {"name": "fails", "steps": [
        {"id": "ask", "type": "signal", "config": {"name": "never", "timeout_seconds": 0.5}},
    ]}  # fmt: skip
    path = tmp_path / "fails.json"
    path.write_text(json.dumps(failing))
    ran = live_engine.run("run", str(path), namespace=ns)
    assert ran.code == 1, ran.out + ran.err
    assert re.search(r"^flow fingerprint:\s+\(none: flow failed\)$", ran.out, re.M), ran.out
    flow_id = re.search(r"^flow (\S+) \(", ran.out, re.M)[1]  # type: ignore[index]
    shown_failed = live_engine.run("flows", "show", flow_id, namespace=ns).out
    assert re.search(r"^ask\s+failed\s", _row(shown_failed, "ask")), shown_failed
    assert re.search(r"^flow fingerprint:\s+\(none: flow failed\)$", shown_failed, re.M)
