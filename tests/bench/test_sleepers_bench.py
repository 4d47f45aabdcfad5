"""``python -m bench.sleepers_bench --flows 40`` runs end to end and reports every figure.

A smoke test of the long-sleeps benchmark (issue 19): it asserts no size or speed (figures belong
in docs/benchmarks.md), only that every flow went to sleep, that an engine restart left them all
asleep (nothing was due for a year), and what each sleeping flow is in the store: the events of
greet and of the wait's start (I S F S T), and one flows row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.fixtures.postgres import PgServer, drop_database

REPO = Path(__file__).resolve().parents[2]
FLOWS = 40


def test_the_sleepers_benchmark_reports_every_figure(pg_server: PgServer, tmp_path: Path) -> None:
    database = f"fl_bench_{uuid.uuid4().hex[:12]}"
    out = tmp_path / "sleepers.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORE_", "ENGINE_"))}
    env["DATABASE_URL"] = pg_server.admin_url
    argv = [sys.executable, "-m", "bench.sleepers_bench", "--flows", str(FLOWS), "--json",
            str(out), "--database", database]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )
    finally:
        drop_database(pg_server, database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sleepers: {FLOWS} flows asleep for a year" in done.stdout
    report = json.loads(out.read_text())
    assert report["flows"] == FLOWS
    assert report["still_waiting_after_restart"] == FLOWS
    assert set(report["engine_rss_kib"]) == {"before", "all_asleep", "restarted_all_asleep"}
    assert all(v > 0 for v in report["engine_rss_kib"].values())
    store = report["store"]
    assert store["events_per_flow"] == {
        "flow_initialized": 1.0, "step_started": 2.0, "step_finished": 1.0, "timer_started": 1.0,
    }
    assert store["flows_rows"] == FLOWS
