"""flowctl against live services (store and engine processes on loopback, both backends)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from tests.clients.python.flowctl.live import REPO, Done, Live, flowctl
from tests.demo.test_demo import CHEM_DEFINITION_HASH, CHEM_ORDER_1_FLOW_FINGERPRINT

CHEM = str(REPO / "examples" / "chem.yaml")
HELLO = str(REPO / "examples" / "hello.yaml")


def ok_json(done: Done) -> Any:
    assert done.code == 0, done.out + done.err
    return json.loads(done.out)


def assert_one_line_error(done: Done, *expected: str) -> None:
    assert done.code != 0, done.out
    assert "Traceback" not in done.err + done.out
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith("Error: "), done.err
    for text in expected:
        assert text in lines[0], lines[0]


def test_run_chem_prints_events_variants_and_the_golden_fingerprint(
    live_engine: Live, ns: str
) -> None:
    done = live_engine.run("run", CHEM, "--input", '{"order": 1}', namespace=ns)
    assert done.code == 0, done.out + done.err
    assert re.search(r"^variants:\s+ISFSFSFC$", done.out, re.M), done.out
    assert re.search(rf"^flow fingerprint:\s+{CHEM_ORDER_1_FLOW_FINGERPRINT}$", done.out, re.M)
    for step in ("seed", "split", "print_and_count"):
        assert re.search(rf"^\s+finished\s+{step}$", done.out, re.M), done.out  # progress
    # The events, each with its time (UTC) and detail.
    assert re.search(
        rf"^8\s+\d\d:\d\d:\d\d\.\d{{3}}\s+C\s+flow_completed\s+flow fingerprint "
        rf"{CHEM_ORDER_1_FLOW_FINGERPRINT}$", done.out, re.M,
    ), done.out


def test_every_read_command_has_parseable_json(live_engine: Live, ns: str) -> None:
    ran = ok_json(live_engine.run("run", CHEM, "--input", '{"order": 1}', "--json", namespace=ns))
    assert ran["status"] == "completed"
    assert ran["variants"] == "ISFSFSFC"
    assert ran["flow_fingerprint"] == CHEM_ORDER_1_FLOW_FINGERPRINT
    assert ran["definition"]["definition_hash"] == CHEM_DEFINITION_HASH
    flow_id = ran["flow_id"]

    listed = ok_json(live_engine.run("flows", "ls", "--json", namespace=ns))
    assert [f["flow_id"] for f in listed] == [flow_id]
    assert listed[0]["status"] == "completed"

    shown = ok_json(live_engine.run("flows", "show", flow_id, "--json", namespace=ns))
    assert shown["flow_fingerprint"] == CHEM_ORDER_1_FLOW_FINGERPRINT
    assert [s["step_id"] for s in shown["steps"]] == ["seed", "split", "print_and_count"]

    events = ok_json(live_engine.run("events", flow_id, "--json", namespace=ns))
    assert "".join(e["variant"] for e in events) == "ISFSFSFC"
    assert events[-1]["payload"]["flow_fingerprint"] == CHEM_ORDER_1_FLOW_FINGERPRINT

    watched = live_engine.run("watch", flow_id, "--json", namespace=ns)
    assert watched.code == 0, watched.err
    lines = [json.loads(line) for line in watched.out.splitlines()]
    assert [e["version"] for e in lines] == list(range(1, 9))

    verified = ok_json(live_engine.run("verify", flow_id, "--json", namespace=ns))
    assert verified["ok"] is True
    assert verified["events_checked"] == 8

    branched = ok_json(live_engine.run(
        "branch", flow_id, "--at", "seed", "--param", "seed.text=Adios", "--json", namespace=ns
    ))
    assert branched["view"]["status"] == "completed"
    assert branched["view"]["flow"]["parent_flow_id"] == flow_id
    assert branched["view"]["flow_fingerprint"] not in (None, CHEM_ORDER_1_FLOW_FINGERPRINT)
    again = ok_json(live_engine.run("verify", branched["flow_id"], "--json", namespace=ns))
    assert again["ok"] is True

    definitions = ok_json(live_engine.run("defs", "ls", "--json", namespace=ns))
    assert [(d["name"], d["version"], d["state"]) for d in definitions] == [
        ("chem", 1, "published")
    ]
    chem = ok_json(live_engine.run("defs", "show", "chem", "--json", namespace=ns))
    assert chem["definition_hash"] == CHEM_DEFINITION_HASH


def test_human_output_of_read_commands(live_engine: Live, ns: str) -> None:
    flow_id = ok_json(live_engine.run("run", CHEM, "--json", namespace=ns))["flow_id"]
    listed = live_engine.run("flows", "ls", namespace=ns)
    assert re.search(rf"^{flow_id}\s+chem\s+completed\s+8\s", listed.out, re.M), listed.out
    events = live_engine.run("events", flow_id, namespace=ns)
    assert "variants: ISFSFSFC" in events.out
    shown = live_engine.run("flows", "show", flow_id, namespace=ns)
    assert re.search(r"^status:\s+completed$", shown.out, re.M), shown.out
    verified = live_engine.run("verify", flow_id, namespace=ns)
    assert verified.out.startswith(f"verify {flow_id}: ok (8 events"), verified.out


def test_definition_lifecycle(live_engine: Live, ns: str, tmp_path: Path) -> None:
    draft = ok_json(live_engine.run("defs", "create", HELLO, "--json", namespace=ns))
    assert (draft["name"], draft["version"], draft["state"]) == ("hello", 1, "draft")
    published = ok_json(live_engine.run("defs", "publish", "hello", "1", "--json", namespace=ns))
    assert published["state"] == "published"
    # run finds the same file already created and published: no new version
    ran = ok_json(
        live_engine.run("run", HELLO, "--input", '{"name": "ana"}', "--json", namespace=ns)
    )
    assert ran["definition"]["version"] == 1
    assert ran["variants"] == "ISFSFSFC"

    second = tmp_path / "hello2.yaml"
    second.write_text(Path(HELLO).read_text().replace("name: world", "name: moon"))
    v2 = ok_json(
        live_engine.run("defs", "create", str(second), "--publish", "--json", namespace=ns)
    )
    assert (v2["name"], v2["version"], v2["state"]) == ("hello", 2, "published")
    rolled = ok_json(live_engine.run("defs", "rollback", "hello", "1", "--json", namespace=ns))
    assert rolled["version"] == 1
    latest = ok_json(live_engine.run("defs", "show", "hello", "--json", namespace=ns))
    assert latest["version"] == 1
    archived = ok_json(live_engine.run("defs", "archive", "hello", "2", "--json", namespace=ns))
    assert archived["state"] == "archived"
    versions = ok_json(live_engine.run("defs", "ls", "hello", "--json", namespace=ns))
    assert sorted((v["version"], v["state"]) for v in versions) == [
        (1, "published"), (2, "archived")
    ]


def test_errors_are_one_line_with_a_non_zero_exit(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    unknown = str(uuid.uuid4())
    for args in (("flows", "show", unknown), ("events", unknown), ("verify", unknown)):
        assert_one_line_error(live_engine.run(*args, namespace=ns), "NOT_FOUND")

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n  - id: a\n")
    assert_one_line_error(live_engine.run("run", str(bad), namespace=ns), "bad YAML at line")

    # Hostile documents are refused before they are sent, in one line (flowledger_core.documents).
    deep = tmp_path / "deep.json"
    deep.write_text('{"steps": ' + "[" * 10_000 + "]" * 10_000 + "}")
    assert_one_line_error(
        live_engine.run("run", str(deep), namespace=ns), "nested deeper than 64 levels"
    )
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(
            f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
            for p, n in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "steps: [*h]\n"
    )
    assert_one_line_error(live_engine.run("run", str(bomb), namespace=ns), "aliases")

    unknown_type = tmp_path / "odd.yaml"
    unknown_type.write_text("steps:\n  - {id: a, type: no.such.type}\n")
    assert_one_line_error(
        live_engine.run("run", str(unknown_type), namespace=ns), "INVALID_ARGUMENT"
    )
    assert_one_line_error(
        live_engine.run("run", CHEM, "--input", "{nope", namespace=ns), "--input", "bad JSON"
    )


def test_an_unreachable_engine_is_one_line() -> None:
    from flowctl.devserver.postgres import free_port

    done = flowctl("flows", "ls", engine=f"127.0.0.1:{free_port()}")
    assert_one_line_error(done, "UNAVAILABLE")
