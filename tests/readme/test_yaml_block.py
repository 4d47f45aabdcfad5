"""The README's ```yaml block: it is examples/hello.yaml, and run as a file by ``flowctl run`` it
gives the same flow fingerprint as the README's Python block (same steps, same input)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.clients.python.flowctl.live import REPO, Live
from tests.readme.blocks import HELLO_ANA_FLOW_FINGERPRINT, readme_block


def yaml_block() -> str:
    return readme_block("yaml", "name: hello").content


def test_yaml_block_is_examples_hello() -> None:
    # The README's tour runs examples/hello.yaml; the block must show that file, not a variant.
    example = yaml.safe_load((REPO / "examples" / "hello.yaml").read_text())
    assert yaml.safe_load(yaml_block()) == example


def test_yaml_block_runs_with_the_python_fingerprint(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(yaml_block())
    done = live_engine.run("run", str(path), "--input", '{"name": "ana"}', namespace=ns)
    assert done.code == 0, done.out + done.err
    assert re.search(r"^variants:\s+ISFSFSFC$", done.out, re.M), done.out
    assert re.search(rf"^flow fingerprint:\s+{HELLO_ANA_FLOW_FINGERPRINT}$", done.out, re.M), (
        done.out
    )
