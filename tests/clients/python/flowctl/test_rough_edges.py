"""The CLI's edges, through the real ``flowctl`` executable against live services (both
backends): empty listings in a script, a closed pipe, the version convention of ``defs``,
which version runs, dotted branch params as a merge patch, an unknown signal name, the store
taken for the engine, and shell completion."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
from collections import Counter
from pathlib import Path

from flowledger.client import FlowledgerClient
from tests.clients.python.flowctl.live import FLOWCTL, REPO, Live, flowctl, service_env
from tests.clients.python.flowctl.test_commands import HELLO, assert_one_line_error, ok_json
from tests.clients.python.flowctl.test_signal_cancel import APPROVAL, background_run, until_waiting

CHEM = str(REPO / "examples" / "chem.yaml")


def test_empty_listings_print_their_header_in_a_script(live_engine: Live, ns: str) -> None:
    for args in (("flows", "ls"), ("flows", "ls", "--status", "failed"), ("defs", "ls", "nope")):
        done = live_engine.run(*args, namespace=ns)  # stdout is a pipe, not a terminal
        assert done.code == 0, done.err
        assert done.err == ""
        [header] = done.out.splitlines()
        assert header.split()[0] in ("flow", "name")


def test_a_closed_pipe_ends_it_quietly(live_engine: Live, ns: str) -> None:
    """As ``flowctl events ID | head`` once the reader has gone: the write fails with EPIPE."""
    flow_id = ok_json(live_engine.run("run", CHEM, "--json", namespace=ns))["flow_id"]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before flowctl writes a byte
    try:
        done = subprocess.run(
            [FLOWCTL, "--engine", live_engine.engine, "-n", ns, "events", flow_id],
            cwd=REPO, env=service_env(), stdout=write, stderr=subprocess.PIPE, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


def test_defs_take_the_version_positionally_and_say_which_runs(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    assert live_engine.run("defs", "create", HELLO, "--publish", namespace=ns).code == 0
    second = tmp_path / "hello2.yaml"
    second.write_text(Path(HELLO).read_text().replace("name: world", "name: moon"))
    assert live_engine.run("defs", "create", str(second), "--publish", namespace=ns).code == 0
    assert live_engine.run("defs", "rollback", "hello", "1", namespace=ns).code == 0

    for args in (("hello", "1"), ("hello", "--version", "1")):  # positional; the old option too
        assert ok_json(live_engine.run("defs", "show", *args, "--json", namespace=ns))[
            "version"
        ] == 1
    assert ok_json(live_engine.run("defs", "show", "hello", "2", "--json", namespace=ns))[
        "version"
    ] == 2

    listed = live_engine.run("defs", "ls", "hello", namespace=ns).out
    rows = {line.split()[1]: line for line in listed.splitlines()[1:]}
    assert re.search(r"^hello\s+1\s+published\s+yes\s", rows["1"]), listed
    assert re.search(r"^hello\s+2\s+published\s+no \(v1 does\)\s", rows["2"]), listed
    latest = live_engine.run("defs", "ls", namespace=ns).out
    assert re.search(r"^hello\s+2\s+published\s+no \(v1 does\)\s", latest, re.M), latest


def test_a_dotted_param_sets_that_key_and_keeps_the_rest(
    live_engine: Live, ns: str, tmp_path: Path
) -> None:
    path = tmp_path / "post.json"
    path.write_text(json.dumps({"name": "post", "steps": [
        {"id": "charge", "type": "http", "config": {
            "method": "POST", "url": "http://127.0.0.1:9/charge", "retries": 0,
            "headers": {"Accept": "application/json", "X-Trace": "1"},
        }},
    ]}))  # fmt: skip
    ran = live_engine.run("run", str(path), "--json", namespace=ns)
    assert ran.code == 1, ran.err  # nothing listens: it failed, and may be branched
    parent = json.loads(ran.out)["flow_id"]
    branched = live_engine.run(
        "branch", parent, "--at", "charge", "--param", "charge.url=http://127.0.0.1:9/v2",
        "--param", "charge.headers.X-Trace=null", "--param", "charge.headers.X-Id=abc",
        "--no-wait", "--json", namespace=ns,
    )  # fmt: skip
    branch_id = ok_json(branched)["flow_id"]
    events = ok_json(live_engine.run("events", branch_id, "--json", namespace=ns))
    [assigned] = [e for e in events if e["type"] == "property_preference_assigned"]
    assert assigned["payload"]["params"] == {"charge": {
        "method": "POST", "url": "http://127.0.0.1:9/v2", "retries": 0,
        "headers": {"Accept": "application/json", "X-Id": "abc"},
    }}  # fmt: skip


def test_a_signal_no_step_waits_for_is_flagged(live_engine: Live, ns: str) -> None:
    run, flow_id = background_run(live_engine, ns, APPROVAL, "--input", '{"name": "o 6"}')
    try:
        until_waiting(live_engine, ns, flow_id)
        strict = live_engine.run("signal", flow_id, "aproved", "{}", "--strict", namespace=ns)
        assert_one_line_error(strict, "waits for signal 'aproved'", "nothing sent (--strict)")
        assert "'approved'" in strict.err  # the names it does wait for
        loose = live_engine.run("signal", flow_id, "aproved", "{}", namespace=ns)
        assert loose.code == 0, loose.err
        assert loose.err.startswith("warning: no step of flow"), loose.err
        assert "kept until a step waits for it" in loose.out
        known = live_engine.run("signal", flow_id, "approved", '{"message": "ok"}', namespace=ns)
        assert (known.code, known.err) == (0, "")
    finally:
        run.finish()
    events = ok_json(live_engine.run("events", flow_id, "--json", namespace=ns))
    received = [e["payload"]["name"] for e in events if e["type"] == "signal_received"]
    assert received == ["aproved", "approved"]  # --strict sent nothing


def test_the_store_is_not_taken_for_an_engine(live_engine: Live) -> None:
    store = live_engine.store
    done = flowctl("--engine", store, "flows", "ls")
    assert_one_line_error(done, f"{store} is not a flowledger engine", "is it the store?")


def test_completion_scripts_and_live_candidates(live_engine: Live, ns: str) -> None:
    for shell in ("bash", "zsh", "fish"):
        script = flowctl("completion", shell)
        assert script.code == 0, script.err
        assert "_FLOWCTL_COMPLETE" in script.out
    flow_id = ok_json(live_engine.run("run", CHEM, "--json", namespace=ns))["flow_id"]

    def candidates(*words: str) -> list[str]:
        line = ["flowctl", "--engine", live_engine.engine, "-n", ns, *words]
        env = {**service_env(), "_FLOWCTL_COMPLETE": "bash_complete",
               "COMP_WORDS": " ".join(line), "COMP_CWORD": str(len(line) - 1),
               # A busy machine must not turn an answer into no candidates.
               "FLOWCTL_COMPLETE_TIMEOUT": "60"}  # fmt: skip
        done = subprocess.run([FLOWCTL], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [item.split(",", 1)[1] for item in done.stdout.split()]

    assert candidates("flows", "show", flow_id[:6]) == [flow_id]
    assert candidates("events", "zzz") == []
    assert candidates("defs", "show", "ch") == ["chem"]


def test_a_unique_start_of_an_id_names_the_flow(live_engine: Live, ns: str) -> None:
    document = Path(HELLO).read_text()

    async def start_17() -> list[str]:
        async with FlowledgerClient(live_engine.engine) as client:
            created = await client.create_definition(ns, "hello", document, format="yaml")
            await client.publish_definition(ns, "hello", created.version.version)
            return [
                (await client.start_flow(ns, "hello", {"name": str(i)})).flow_id
                for i in range(17)
            ]

    ids = asyncio.run(start_17())
    # 17 ids, 16 hex digits: two share their first character (pigeonhole), so it is ambiguous.
    shared = Counter(i[0] for i in ids).most_common(1)[0][0]
    ambiguous = live_engine.run("flows", "show", shared, namespace=ns)
    assert_one_line_error(ambiguous, f"{shared!r} begins the ids of several flows", "give more")
    one = ids[0]
    unique = next(n for n in range(1, 37) if sum(i.startswith(one[:n]) for i in ids) == 1)
    for typed in (one[:unique], one[:unique].upper(), one.replace("-", "")[: max(unique, 9)]):
        shown = ok_json(live_engine.run("flows", "show", typed, "--json", namespace=ns))
        assert shown["flow"]["flow_id"] == one, typed
    watched = live_engine.run("watch", one[:unique], namespace=ns)  # hello ends by itself
    assert watched.out.rstrip().endswith(f"flow {one}: completed"), watched.out
    absent = next(p for p in (f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef")
                  if not any(i.startswith(p) for i in ids))  # fmt: skip
    assert_one_line_error(
        live_engine.run("events", absent, namespace=ns),
        f"no flow of namespace {ns!r} has an id beginning with {absent!r}",
    )
    assert_one_line_error(live_engine.run("events", "nope", namespace=ns), "flow_id")


def _in_a_terminal(argv: list[str], columns: int) -> str:
    """``argv``'s output on a pseudo-terminal ``columns`` wide (what a person sees)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in service_env().items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, cwd=REPO, env={**env, "TERM": "xterm"}, stdin=follower,
                            stdout=follower, stderr=follower, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())


def test_ids_are_never_wrapped_in_an_80_column_terminal(live_engine: Live, ns: str) -> None:
    parent = ok_json(live_engine.run("run", CHEM, "--json", namespace=ns))["flow_id"]
    branch = ok_json(live_engine.run("branch", parent, "--at", "split", "--json", namespace=ns))
    shown = _in_a_terminal(
        [FLOWCTL, "--engine", live_engine.engine, "-n", ns, "flows", "ls"], columns=80
    )
    lines = shown.splitlines()
    for flow_id in (parent, branch["flow_id"]):
        assert any(flow_id in line for line in lines), shown  # whole, on one line
    assert sum(parent in line for line in lines) == 2, shown  # as a flow and as a parent
