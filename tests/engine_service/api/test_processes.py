"""Engine replicas as real processes over a store process and Postgres: determinism across
processes, SIGKILL and SIGSTOP of a replica mid-flow, a store restart, settings, SIGTERM.

Mid-flow is made deterministic by the ``testing.gate`` step (:mod:`tests.engine_service.
gate_steps`): a replica that enters it leaves a marker with its pid and waits for the test.
Waits are bounded; the figures (time to takeover) are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flowledger.canonical import parse_json
from flowledger.client import FlowledgerClient
from flowledger.types import Event, EventType, FlowStatus
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import BOUND_S, HELLO_DOCUMENT, published
from tests.engine_service.api.processes import (
    REPO,
    ServiceProcess,
    base_env,
    engine_env,
    free_port,
    service_process,
    store_env,
)
from tests.engine_service.run.test_engine import GOLDEN
from tests.fixtures.store_server import wait_until

CHEM_DOCUMENT = {
    "steps": [
        {"id": "seed", "type": "chem.seed", "config": {"text": "Hola"}},
        {"id": "split", "type": "chem.split"},
        {"id": "print_and_count", "type": "chem.print_and_count"},
    ]
}


Run = tuple[list[Event], str | None]


@pytest.fixture
async def store(migrated_database_url: str) -> AsyncIterator[ServiceProcess]:
    async with service_process("store_service", store_env(migrated_database_url, 0)) as proc:
        yield proc


async def events_of(client: FlowledgerClient, ns: str, flow_id: str) -> list[Event]:
    return [e async for u in client.watch_flow(ns, flow_id) for e in u.events]


def normalized(events: list[Event]) -> list[tuple[int, str, Any]]:
    """Events without ids, sequence numbers, command ids and timestamps."""
    return [(e.version, e.type.value, parse_json(e.payload_json)) for e in events]


def finished_per_step(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        if event.type is EventType.STEP_FINISHED:
            counts[event.payload["step_id"]] = counts.get(event.payload["step_id"], 0) + 1
    return counts


async def run_on(engine: ServiceProcess, ns: str, name: str, flow_input: Any) -> Run:
    async with FlowledgerClient(engine.address, timeout=BOUND_S) as client:
        started = await client.start_flow(ns, name, flow_input)
        view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
        assert view.status is FlowStatus.COMPLETED
        return await events_of(client, ns, started.flow_id), view.flow_fingerprint


async def test_two_engine_processes_record_the_same_events_and_fingerprints(
    store: ServiceProcess, ns: str, tmp_path: Path
) -> None:
    results: list[tuple[int, Run, Run]] = []
    for _ in range(2):  # one replica after the other: each flow surely runs in its own process
        async with service_process("engine_service", engine_env(store.address, tmp_path)) as eng:
            await wait_until(eng.serving, "the engine to serve", BOUND_S)
            if not results:
                async with FlowledgerClient(eng.address) as client:
                    await published(client, ns, "hello", HELLO_DOCUMENT)
                    await published(client, ns, "chem", CHEM_DOCUMENT)
            hello = await run_on(eng, ns, "hello", {"name": "ana"})
            chem = await run_on(eng, ns, "chem", None)
            results.append((eng.pid, hello, chem))
    (pid_a, hello_a, chem_a), (pid_b, hello_b, chem_b) = results
    assert pid_a != pid_b
    assert normalized(hello_a[0]) == normalized(hello_b[0])
    assert normalized(chem_a[0]) == normalized(chem_b[0])
    assert hello_a[1] == hello_b[1] == GOLDEN["hello-ana"].flow
    assert chem_a[1] == chem_b[1] == GOLDEN["chem"].flow
    assert "".join(e.variant for e in chem_a[0]) == "ISFSFSFC"


async def _gated_flow_inside(
    engine: ServiceProcess, ns: str, gate_dir: Path, gate: str
) -> str:
    """Publish the gated flow, start it on ``engine`` and wait until that replica is inside
    the gate step; returns the flow id."""
    async with FlowledgerClient(engine.address, timeout=BOUND_S) as client:
        await published(client, ns, "gated", gate_steps.gated_document(gate))
        started = await client.start_flow(ns, "gated", {"name": "kim"})
    await wait_until(lambda: engine.pid in gate_steps.entered(gate_dir, gate),
                     f"replica {engine.pid} inside the gate", BOUND_S)
    return started.flow_id


async def _uninterrupted_fingerprint(
    engine: ServiceProcess, ns: str, gate_dir: Path, gate: str
) -> str | None:
    (gate_dir / f"{gate}.open").touch()
    _, fingerprint = await run_on(engine, ns, "gated", {"name": "kim"})
    return fingerprint


async def test_a_killed_replica_s_flow_is_finished_by_another(
    store: ServiceProcess, ns: str, tmp_path: Path
) -> None:
    env = engine_env(store.address, tmp_path)
    async with service_process("engine_service", env) as first:
        await wait_until(first.serving, "the first engine", BOUND_S)
        flow_id = await _gated_flow_inside(first, ns, tmp_path, "k1")
        async with service_process("engine_service", env) as second:
            await wait_until(second.serving, "the second engine", BOUND_S)
            first.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert await first.wait(BOUND_S) == -signal.SIGKILL
            await wait_until(lambda: second.pid in gate_steps.entered(tmp_path, "k1"),
                             "the second replica to take the flow over", BOUND_S)
            takeover_s = time.monotonic() - killed_at
            async with FlowledgerClient(second.address, timeout=BOUND_S) as client:
                (tmp_path / "k1.open").touch()
                view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
                events = await events_of(client, ns, flow_id)
            assert view.status is FlowStatus.COMPLETED
            assert finished_per_step(events) == {"greet": 1, "gate": 1, "shout": 1, "done": 1}
            assert view.step("gate") is not None
            assert await second.metric("flowledger_engine_lease_takeovers_total") == 1
            assert view.flow_fingerprint == await _uninterrupted_fingerprint(
                second, ns, tmp_path, "k1"
            )
    print(f"\ntakeover after SIGKILL: {takeover_s:.2f}s (lease 1.0s, poll 0.1s)",
          file=sys.stderr)


async def test_a_paused_replica_cannot_write_after_its_lease_expired(
    store: ServiceProcess, ns: str, tmp_path: Path
) -> None:
    # A lease with room to spare: the second replica must keep it while the test works.
    env = engine_env(store.address, tmp_path, ENGINE_LEASE_MS="2000", ENGINE_HEARTBEAT_MS="400")
    async with service_process("engine_service", env) as first:
        await wait_until(first.serving, "the first engine", BOUND_S)
        flow_id = await _gated_flow_inside(first, ns, tmp_path, "p1")
        async with service_process("engine_service", env) as second, FlowledgerClient(
            second.address, timeout=BOUND_S
        ) as client:
            await wait_until(second.serving, "the second engine", BOUND_S)
            first.signal(signal.SIGSTOP)
            await wait_until(lambda: second.pid in gate_steps.entered(tmp_path, "p1"),
                             "the second replica to take the paused one's flow", BOUND_S)
            # Let only the paused replica's step through the gate (once), then wake it: its
            # lease is gone, so whatever it does next must not reach the log.
            (tmp_path / f"p1.open.{first.pid}").touch()
            first.signal(signal.SIGCONT)
            await wait_until(
                lambda: _lost(first), "the woken replica to notice its lost lease", BOUND_S
            )
            events = await events_of_running(client, ns, flow_id)
            assert "gate" not in finished_per_step(events)  # nothing written by the paused one
            (tmp_path / "p1.open").touch()
            view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
            events = await events_of(client, ns, flow_id)
            assert view.status is FlowStatus.COMPLETED
            assert finished_per_step(events) == {"greet": 1, "gate": 1, "shout": 1, "done": 1}
            assert [e.type for e in events].count(EventType.FLOW_COMPLETED) == 1
            assert await first.serving()  # the woken replica lives on
            # One real takeover: the paused replica's expired lease.
            assert await second.metric("flowledger_engine_lease_takeovers_total") == 1
    assert "lease lost" in first.log


WAITS_DOCUMENT = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        # Longer than the engine's inline wait (1 s): the flow lets go of its lease and is
        # claimed again when due.
        {"id": "pause", "type": "wait", "config": {"seconds": 1.2}},
        {"id": "approve", "type": "signal", "config": {"name": "approved"}},
        {"id": "done", "type": "hello.done"},
    ]
}


async def _waits_for_the_signal(client: FlowledgerClient, ns: str, flow_id: str) -> bool:
    """The timer fired (W), pause finished, approve started and waits (its own timer: T)."""
    view = await client.describe_flow(ns, flow_id)
    return view.status is FlowStatus.WAITING and view.variants.endswith("WFST")


async def test_starts_and_resumes_after_waits_are_not_takeovers(
    store: ServiceProcess, ns: str, tmp_path: Path
) -> None:
    """flowledger_engine_lease_takeovers_total counts only leases that expired unreleased: a
    replica that starts flows, resumes them after a timer and after a signal counts none (it
    once counted every one of them, and the takeover alert fired at ~6 starts a minute)."""
    async with service_process("engine_service", engine_env(store.address, tmp_path)) as eng:
        await wait_until(eng.serving, "the engine to serve", BOUND_S)
        async with FlowledgerClient(eng.address, timeout=BOUND_S) as client:
            await published(client, ns, "waits", WAITS_DOCUMENT)
            await published(client, ns, "hello", HELLO_DOCUMENT)
            flows = [(await client.start_flow(ns, "waits", None)).flow_id for _ in range(3)]
            for _ in range(3):
                await run_on(eng, ns, "hello", {"name": "ana"})
            for flow_id in flows:
                await wait_until(functools.partial(_waits_for_the_signal, client, ns, flow_id),
                                 "the timer to resume the flow into its signal step", BOUND_S)
                await client.signal_flow(ns, flow_id, "approved", {"message": "yes"})
            for flow_id in flows:
                view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
                assert view.status is FlowStatus.COMPLETED
        assert await eng.metric("flowledger_engine_lease_claims_total") >= 6  # 2 resumes each
        assert await eng.metric("flowledger_engine_lease_takeovers_total") == 0


async def _lost(engine: ServiceProcess) -> bool:
    return await engine.metric("flowledger_engine_leases_lost_total") >= 1


async def events_of_running(client: FlowledgerClient, ns: str, flow_id: str) -> list[Event]:
    """The events so far of a flow that has not ended (watch would wait for its end)."""
    events: list[Event] = []
    view = await client.describe_flow(ns, flow_id)
    async with asyncio.timeout(BOUND_S):
        async for update in client.watch_flow(ns, flow_id):
            events.extend(update.events)
            if events and events[-1].version >= view.flow.version:
                break
    return events


async def test_a_store_restart_mid_flow_is_waited_out(
    migrated_database_url: str, ns: str, tmp_path: Path
) -> None:
    port = free_port()
    env = store_env(migrated_database_url, port)
    async with service_process("store_service", env) as store:
        engine_cm = service_process("engine_service", engine_env(store.address, tmp_path))
        engine = await engine_cm.__aenter__()
        try:
            await wait_until(engine.serving, "the engine", BOUND_S)
            flow_id = await _gated_flow_inside(engine, ns, tmp_path, "s1")
            store.signal(signal.SIGKILL)
            await store.wait(BOUND_S)
            await wait_until(engine.not_serving, "the engine to report NOT_SERVING", BOUND_S)
            (tmp_path / "s1.open").touch()  # the step ends while the store is away
            async with service_process("store_service", env):
                await wait_until(engine.serving, "the engine to serve again", BOUND_S)
                async with FlowledgerClient(engine.address, timeout=BOUND_S) as client:
                    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
                    events = await events_of(client, ns, flow_id)
                assert view.status is FlowStatus.COMPLETED
                assert finished_per_step(events) == {
                    "greet": 1, "gate": 1, "shout": 1, "done": 1,
                }
        finally:
            await engine_cm.__aexit__(None, None, None)
    assert "Traceback" not in engine.log


async def test_sigterm_drains_and_exits_0(store: ServiceProcess, tmp_path: Path) -> None:
    async with service_process("engine_service", engine_env(store.address, tmp_path)) as eng:
        await wait_until(eng.serving, "the engine", BOUND_S)
        eng.signal(signal.SIGTERM)
        assert await eng.wait(BOUND_S) == 0
    assert "received SIGTERM" in eng.log
    assert "engine stopped" in eng.log
    assert "Traceback" not in eng.log


async def test_an_unreachable_store_is_not_serving_not_an_exit(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with service_process("engine_service", engine_env(dead, tmp_path)) as eng:
        await wait_until(eng.not_serving, "NOT_SERVING", BOUND_S)
        assert eng.proc.returncode is None


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"ENGINE_LEASE_MS": "soon"}, "ENGINE_LEASE_MS"),
        ({"ENGINE_LEASE_MS": "50"}, "ENGINE_LEASE_MS"),
        ({"ENGINE_LEASE_MS": "1000", "ENGINE_HEARTBEAT_MS": "800"}, "ENGINE_HEARTBEAT_MS"),
        ({"STORE_ADDR": "nowhere"}, "STORE_ADDR"),
        ({"ENGINE_LISTEN": "127.0.0.1:99999"}, "ENGINE_LISTEN"),
        ({"ENGINE_ID": "has spaces"}, "ENGINE_ID"),
        ({"ENGINE_CLAIM_BATCH": "0"}, "ENGINE_CLAIM_BATCH"),
        ({"ENGINE_STEP_PLUGINS": "no_such_module:install"}, "ENGINE_STEP_PLUGINS"),
        ({"ENGINE_STEP_PLUGINS": "not a plugin"}, "ENGINE_STEP_PLUGINS"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_variable(
    settings: dict[str, str], variable: str
) -> None:
    env = base_env(ENGINE_LISTEN="127.0.0.1:0", ENGINE_METRICS_LISTEN="off")
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-m", "engine_service"], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
