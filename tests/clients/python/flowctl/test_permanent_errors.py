"""``flowctl branch`` of a flow whose artifact was altered in Postgres: the branch fails once
with ArtifactCorrupt and the command says so (exit 1) instead of waiting for ever."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from flowctl.devserver.services import services
from tests.clients.python.flowctl.live import REPO, Live
from tests.fixtures.postgres import PgServer, fresh_database

CHEM = str(REPO / "examples" / "chem.yaml")


@pytest.fixture(scope="module")
def live_pg(pg_server: PgServer) -> Iterator[tuple[Live, str]]:
    with fresh_database(pg_server) as url, services(url, say=lambda _: None) as running:
        yield Live(running.engine.address, "postgres"), url


def test_a_branch_over_a_corrupt_artifact_fails_once_and_says_why(
    live_pg: tuple[Live, str],
) -> None:
    live, url = live_pg
    ns = f"cli-{uuid.uuid4().hex[:12]}"
    ran = live.run("run", CHEM, "--input", '{"order": 1}', "--json", namespace=ns)
    assert ran.code == 0, ran.out + ran.err
    flow_id = json.loads(ran.out)["flow_id"]
    view = json.loads(live.run("flows", "show", flow_id, "--json", namespace=ns).out)
    [split] = [s for s in view["steps"] if s["step_id"] == "split"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE workflow_step_artifacts SET payload = %s::jsonb WHERE artifact_hash = %s",
            ['{"index": 0, "text": "X"}', split["output_hashes"][0]],
        )

    # Bounded: the old engine re-claimed the branch every lease period and never ended it.
    done = live.run("branch", flow_id, "--at", "print_and_count", "--within", "25", namespace=ns)
    assert done.code == 1, done.out + done.err
    assert "failed" in done.out  # the view, printed before the error
    [error] = done.err.strip().splitlines()
    assert error.startswith("Error: branch ")
    assert "failed at step print_and_count: ArtifactCorrupt: ARTIFACT_CORRUPT" in error
    branch_id = error.split()[2]

    events = json.loads(live.run("events", branch_id, "--json", namespace=ns).out)
    failures = [(e["type"], json.loads(e["payload_json"])["error_type"]) for e in events
                if e["type"] in ("step_failed", "flow_failed")]  # fmt: skip
    assert failures == [("step_failed", "ArtifactCorrupt"), ("flow_failed", "ArtifactCorrupt")]
    shown = json.loads(live.run("flows", "show", branch_id, "--json", namespace=ns).out)
    assert shown["flow"]["status"] == "failed"
