"""``python -m bench.waits_bench --quick`` runs end to end and reports every figure.

A smoke test: the benchmark's services, worker process and report work. It asserts no speed
(figures belong in docs/benchmarks.md), only that each figure is there, counts every flow, and
that no timer fired before its ``fire_at`` (an ordering property, not a speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.fixtures.postgres import PgServer, drop_database

REPO = Path(__file__).resolve().parents[2]
STATS = {"n", "mean", "min", "p50", "p95", "p99", "max"}
COST = {"cpu_ms", "store_calls"}


def run_quick(pg_server: PgServer, out: Path) -> dict[str, Any]:
    database = f"fl_bench_{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORE_", "ENGINE_"))}
    env["DATABASE_URL"] = pg_server.admin_url
    argv = [sys.executable, "-m", "bench.waits_bench", "--quick", "--json", str(out),
            "--database", database]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
        )
    finally:
        drop_database(pg_server, database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "timers: lateness" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_the_quick_run_reports_every_figure(pg_server: PgServer, tmp_path: Path) -> None:
    report = run_quick(pg_server, tmp_path / "report.json")

    assert report["quick"] is True
    machine = report["machine"]
    assert {"nproc", "cpu_model", "python", "postgres", "fsync", "load_1min_before"} <= set(machine)

    timers = report["timers"]
    configs = {(t["poll_ms"], t["replicas"], t["pattern"]) for t in timers}
    assert configs == {
        (poll, replicas, pattern)
        for poll, replicas in ((500, 1), (100, 1), (500, 2))
        for pattern in ("paced", "burst")
    }
    for t in timers:
        for key in ("lateness_ms", "fired_to_completed_ms", "run_minus_wait_ms", "baseline_run_ms"):
            assert set(t[key]) == STATS, key
            assert t[key]["n"] == t["flows"], key
        assert t["lateness_ms"]["min"] >= 0  # no timer fired before its fire_at
        assert set(t["cost"]) == COST
        calls = t["cost"]["store_calls"]  # appends: unary calls or AppendStream messages
        assert calls.get("AppendEvents", 0) + calls.get("AppendStream", 0) > 0

    signals = report["signals"]
    for phase in ("sequential", "concurrent"):
        for key in ("rpc_ms", "response_to_step_finished_ms", "sent_to_step_finished_ms"):
            assert set(signals[phase][key]) == STATS
            assert signals[phase][key]["n"] == signals[phase]["signals"]
    assert signals["concurrent"]["signals_per_s"] > 0
    assert signals["concurrent"]["resumed_steps_per_s"] > 0
    assert set(signals["concurrent"]["cost_per_signal"]) == COST

    assert [b["pattern"] for b in report["task_baseline"]] == ["paced", "burst"]
    for b in report["task_baseline"]:
        assert b["flows_per_s"] > 0
        assert b["step_ms"]["n"] == b["run_ms"]["n"] == b["flows"]
    assert [(t["pollers"], t["pattern"]) for t in report["tasks"]] == [(1, "paced"), (2, "burst")]
    for t in report["tasks"]:
        assert t["deliveries"] == t["flows"]  # each task handed out once (30 s leases)
        assert t["tasks_per_s"] > 0
        assert t["flows_per_s"] > 0
        for key in ("scheduled_to_delivered_ms", "delivered_to_reported_ms", "step_ms", "run_ms"):
            assert set(t[key]) == STATS, key
            assert t[key]["n"] == t["flows"], key
        assert set(t["cost"]) == set(t["idle_cost_per_s"]) == COST
        assert "worker" in t["cost"]["cpu_ms"]
