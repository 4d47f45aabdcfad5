"""The README's first command runs its main job: both services, a flow, its events and fingerprint.

Runs ``python -m flowctl.devserver.demo`` exactly as ``make demo`` does, with DATABASE_URL
unset so that it starts its own throwaway Postgres, and checks what it prints against goldens.
"""

from __future__ import annotations

import os
import subprocess
import sys

# The chem chain with input {"order": 1}: pinned so that the demo's output is checked, not
# only its exit status. Equal to the engine core's result for the same definition and input
# (tests/engine), which shows that the declarative YAML and the Python builder agree.
CHEM_ORDER_1_FLOW_FINGERPRINT = "e836849a460d216f8bae0f46e748f62602bb5216ef37111bec066114460a5f13"
CHEM_DEFINITION_HASH = "d5280a7821eac21594d64cd2dd5f891756bb869e672315ff51b7e6818b4ce974"


def test_demo_runs_a_flow_end_to_end_and_stops_everything() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "flowctl.devserver.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "variants:         ISFSFSFC" in out
    assert f"flow fingerprint: {CHEM_ORDER_1_FLOW_FINGERPRINT}" in out
    assert CHEM_DEFINITION_HASH in out
    assert out.count(": ok (") == 2  # the flow and its branch both verify
    assert "engine:   stopped (exit 0)" in out
    assert "store:    stopped (exit 0)" in out
    assert "demo: flow completed and verified" in out
