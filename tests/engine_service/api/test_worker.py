"""The work loop in-process (both backends): bounded concurrency, drain releasing leases, health
following the store, a store restarting mid-flow, and the engine metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc.aio
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from flowledger.client import FlowledgerClient
from flowledger.types import EventType, FlowStatus
from flowledger_core.domain import ClaimRequest
from flowledger_core.ports import EventStore
from tests.engine_service.api import gate_steps
from tests.engine_service.api.conftest import BOUND_S, Stack, published, running_engine
from tests.fixtures.store_server import running_store, store_settings, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


async def finished_per_step(client: FlowledgerClient, ns: str, flow_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for update in client.watch_flow(ns, flow_id):
        for event in update.events:
            if event.type is EventType.STEP_FINISHED:
                step = event.payload["step_id"]
                counts[step] = counts.get(step, 0) + 1
    return counts


async def test_a_replica_runs_no_more_flows_than_its_slots(
    store_backend: EventStore, ns: str, gate_dir: Path
) -> None:
    async with running_store(store_backend) as store, running_engine(
        store.server.address, max_concurrent_flows=1
    ) as engine, FlowledgerClient(engine.address) as client:
        await published(client, ns, "gated", gate_steps.gated_document("c1"))
        first = await client.start_flow(ns, "gated")
        second = await client.start_flow(ns, "gated")
        await wait_until(lambda: engine.worker.running == 1, "one run", BOUND_S)
        await wait_until(lambda: bool(gate_steps.entered(gate_dir, "c1")), "the gate", BOUND_S)
        views = [await client.describe_flow(ns, f.flow_id) for f in (first, second)]
        assert sorted(v.variants for v in views) == ["I", "ISFS"]  # one waits, unclaimed
        assert engine.worker.running == 1
        (gate_dir / "c1.open").touch()
        for flow in (first, second):
            view = await client.wait_for_flow(ns, flow.flow_id, within=BOUND_S)
            assert view.status is FlowStatus.COMPLETED


async def test_a_draining_replica_releases_its_leases_for_another_to_continue(
    store_backend: EventStore, ns: str, gate_dir: Path
) -> None:
    # Leases far longer than the test: only a release lets the second replica in quickly.
    long_lease = {"lease_ms": 120_000, "heartbeat_ms": 1_000}
    async with running_store(store_backend) as store:
        addr = store.server.address
        async with running_engine(addr, **long_lease) as first:
            async with FlowledgerClient(first.address) as client:
                await published(client, ns, "gated", gate_steps.gated_document("d1"))
                started = await client.start_flow(ns, "gated")
                await wait_until(lambda: first.worker.running == 1, "the run", BOUND_S)
                await wait_until(lambda: bool(gate_steps.entered(gate_dir, "d1")), "gate",
                                 BOUND_S)
            # The step cannot finish: it is abandoned after the grace and its lease released.
            await first.stop(grace=0.5)
        async with running_engine(addr, **long_lease) as second, FlowledgerClient(
            second.address
        ) as client:
            await wait_until(lambda: second.worker.running == 1, "the takeover", BOUND_S)
            (gate_dir / "d1.open").touch()
            view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
            assert view.status is FlowStatus.COMPLETED
            assert await finished_per_step(client, ns, started.flow_id) == {
                "greet": 1, "gate": 1, "shout": 1, "done": 1,
            }


async def test_health_follows_the_store_and_a_flow_survives_a_store_restart(
    store_backend: EventStore, ns: str, gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine_service.store_client.retry")  # failed attempts
    # A lease that outlives the outage: the run itself retries its write until the store is back.
    port = 0
    async with running_store(store_backend) as store:
        port = store.server.port
        engine_cm = running_engine(
            store.server.address, lease_ms=60_000, heartbeat_ms=1_000,
            store_call_timeout_seconds=1.0,
        )
        engine = await engine_cm.__aenter__()
    try:
        # The store is down now (its server stopped): the replica says so and keeps going.
        await wait_until(_status_is(engine.address, NOT_SERVING), "NOT_SERVING", BOUND_S)
        async with running_store(
            store_backend, store_settings(listen=f"127.0.0.1:{port}")
        ) as store:
            await wait_until(_status_is(engine.address, SERVING), "SERVING", BOUND_S)
            async with FlowledgerClient(engine.address) as client:
                await published(client, ns, "gated", gate_steps.gated_document("r1"))
                started = await client.start_flow(ns, "gated")
                await wait_until(lambda: bool(gate_steps.entered(gate_dir, "r1")), "gate",
                                 BOUND_S)
        # Down again, mid-step; the step finishes while the store is away and its
        # StepFinished append fails and is retried.
        refused = _failed_appends(caplog)
        (gate_dir / "r1.open").touch()
        await wait_until(_status_is(engine.address, NOT_SERVING), "NOT_SERVING", BOUND_S)
        await wait_until(
            lambda: _failed_appends(caplog) > refused, "a failed append attempt", BOUND_S
        )
        async with running_store(
            store_backend, store_settings(listen=f"127.0.0.1:{port}")
        ), FlowledgerClient(engine.address) as client:
            view = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
            assert view.status is FlowStatus.COMPLETED
            assert view.variants == "ISFSFSFSFC"
            await wait_until(_status_is(engine.address, SERVING), "SERVING again", BOUND_S)
    finally:
        await engine_cm.__aexit__(None, None, None)


def _failed_appends(caplog: pytest.LogCaptureFixture) -> int:
    # With wait_for_ready, an attempt against a store that is down ends at its deadline; the
    # store client logs each failed attempt it retries (appends go over the AppendStream).
    return sum(
        1 for r in caplog.records
        if r.name == "engine_service.store_client.retry"
        and r.getMessage().startswith(("AppendStream", "AppendEvents"))
    )


def _status_is(address: str, wanted: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await health(address) == wanted

    return check


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_engine_metrics_count_flows_steps_and_claims(
    stack: Stack, client: FlowledgerClient, ns: str
) -> None:
    before_completed = _sample("flowledger_engine_flows_completed_total")
    before_started = _sample("flowledger_engine_flows_started_total", {"kind": "start"})
    before_steps = _sample(
        "flowledger_engine_step_duration_seconds_count",
        {"step_type": "hello.shout", "outcome": "finished"},
    )
    await published(client, ns, "hello")
    flow = await client.start_flow(ns, "hello")
    await client.wait_for_flow(ns, flow.flow_id, within=BOUND_S)
    await wait_until(
        lambda: _sample("flowledger_engine_flows_completed_total") == before_completed + 1,
        "the completion to be counted", BOUND_S,
    )
    assert _sample("flowledger_engine_flows_started_total", {"kind": "start"}) == (
        before_started + 1
    )
    assert _sample(
        "flowledger_engine_step_duration_seconds_count",
        {"step_type": "hello.shout", "outcome": "finished"},
    ) == before_steps + 1
    url = f"http://127.0.0.1:{stack.engine.metrics_port}/metrics"
    started = time.monotonic()
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=10).read().decode()
    )
    assert time.monotonic() - started < BOUND_S
    for name in ("flowledger_engine_lease_claims_total", "flowledger_engine_flows_running",
                 "flowledger_engine_replay_duration_seconds_bucket",
                 'grpc_server_handled_total{grpc_code="OK",grpc_method="StartFlow"'):
        assert name in text


async def test_a_run_whose_lease_was_taken_has_its_write_refused_and_stops(
    migrated_database_url: str, ns: str, gate_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's fencing, seen from a replica: the lease of a run inside a step is expired
    in the database and claimed by someone else (as after a pause past the lease); when the
    step ends, its StepFinished carries the old token and is refused; the run stops, writes
    nothing and does not release the new holder's lease."""
    from store_service.adapters.postgres import PostgresEventStore

    backend = await PostgresEventStore.open(
        migrated_database_url, min_connections=1, max_connections=4, apply_migrations=False
    )
    # No claim poll: the replica must not claim the expired lease itself before the thief does
    # (the test's synchronous UPDATE holds the loop, so an overdue poll would run first).
    slow_heartbeat = {"lease_ms": 120_000, "heartbeat_ms": 5_000, "poll_ms": 60_000}
    try:
        async with running_store(backend) as store, running_engine(
            store.server.address, **slow_heartbeat
        ) as engine, FlowledgerClient(engine.address) as client:
            await published(client, ns, "gated", gate_steps.gated_document("f1"))
            flow_id = (await client.start_flow(ns, "gated")).flow_id
            await wait_until(lambda: bool(gate_steps.entered(gate_dir, "f1")), "gate", BOUND_S)
            lost_before = _sample("flowledger_engine_leases_lost_total")
            with psycopg.connect(migrated_database_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE flows SET lease_expires_at = now() - interval '1 second' "
                    "WHERE flow_id = %s", [flow_id],
                )
            (thief,) = await backend.claim_flows(
                ClaimRequest("thief", 1, 600_000, (ns,), (flow_id,))
            )
            with caplog.at_level(logging.WARNING, logger="engine_service.work.loop"):
                (gate_dir / "f1.open").touch()
                await wait_until(
                    lambda: _sample("flowledger_engine_leases_lost_total") > lost_before,
                    "the run to stop", BOUND_S,
                )
            assert "write refused, lease lost" in caplog.text
            await wait_until(lambda: engine.worker.running == 0, "the run to end", BOUND_S)
            view = await client.describe_flow(ns, flow_id)
            assert view.variants == "ISFS"  # the gate's StepFinished was not recorded
            assert (await backend.get_flow(ns, flow_id)).lease_token == thief.fencing_token
            # The holder lets go; a replica picks the flow up and finishes it, once.
            assert await backend.release_lease(ns, flow_id, thief.fencing_token)
            assert await engine.worker.run_now(ns, flow_id)
            view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
            assert view.variants == "ISFSFSFSFC"
    finally:
        await backend.close()


async def test_a_step_run_again_after_a_takeover_keeps_its_key_and_is_counted(
    migrated_database_url: str, ns: str, gate_dir: Path
) -> None:
    """At-least-once, visible: the run inside a step loses its lease (expired in the database,
    so its renewal is refused); the flow is claimed again as a takeover, the step runs again
    with the same idempotency key, and ``flowledger_engine_step_reexecutions_total`` counts it
    by step type. The first execution's outcome is dropped (its write would be refused)."""
    from store_service.adapters.postgres import PostgresEventStore

    backend = await PostgresEventStore.open(
        migrated_database_url, min_connections=1, max_connections=4, apply_migrations=False
    )
    labels = {"step_type": gate_steps.GATE_TYPE}
    keys = gate_dir / "t1.keys"
    try:
        async with running_store(backend) as store, running_engine(
            store.server.address, lease_ms=2000, heartbeat_ms=300
        ) as engine, FlowledgerClient(engine.address) as client:
            await published(client, ns, "gated", gate_steps.gated_document("t1"))
            flow_id = (await client.start_flow(ns, "gated")).flow_id
            await wait_until(lambda: bool(gate_steps.entered(gate_dir, "t1")), "gate", BOUND_S)
            again_before = _sample("flowledger_engine_step_reexecutions_total", labels)
            with psycopg.connect(migrated_database_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE flows SET lease_expires_at = now() - interval '1 second' "
                    "WHERE flow_id = %s", [flow_id],
                )
            # The run loses the lease at its next renewal; a claim takes the flow over and
            # enters the step again.
            await wait_until(
                lambda: keys.exists() and len(keys.read_text().splitlines()) == 2,
                "the step's second execution", BOUND_S,
            )
            assert (
                _sample("flowledger_engine_step_reexecutions_total", labels) == again_before + 1
            )
            (gate_dir / "t1.open").touch()
            view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
            assert view.variants == "ISFSFSFSFC"  # one StepFinished per step
        assert keys.read_text().splitlines() == [f"{flow_id}:gate:1"] * 2
    finally:
        await backend.close()
