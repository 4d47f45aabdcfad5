"""The README's "Command line" block: every ``flowctl`` line runs (``up`` in test_up.py)."""

from __future__ import annotations

import re
import shlex

from tests.clients.python.flowctl.live import REPO, Live
from tests.demo.test_demo import CHEM_ORDER_1_FLOW_FINGERPRINT


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_block_starts_with_up_and_names_every_command() -> None:
    commands = readme_commands()
    assert commands[0] == ["flowctl", "up"]
    named = {c[1] for c in commands}
    assert named >= {"up", "run", "flows", "events", "watch", "branch", "verify", "defs"}


def test_every_readme_command_runs(live_engine: Live, ns: str) -> None:
    flow_id = ""
    for argv in readme_commands()[1:]:
        assert argv[0] == "flowctl"
        args = [flow_id if a == "$FLOW" else a for a in argv[1:]]
        done = live_engine.run(*args, namespace=ns)
        assert done.code == 0, f"{shlex.join(argv)}:\n{done.out}{done.err}"
        if args[0] == "run":
            assert CHEM_ORDER_1_FLOW_FINGERPRINT in done.out
            flow_id = re.findall(r"^flow (\S+) \(", done.out, re.M)[0]
