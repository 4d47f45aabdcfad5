"""A real Prometheus scrapes both services (as processes, over Postgres) while flows run; every
expression of the Grafana dashboard and of the alert rules must then find series.

Dashboard queries are run as they are (``$__rate_interval`` becomes 30s) and must return at
least one series. Alert expressions end in a threshold (``> 0.05``, ``== 0``) and are empty
unless the alert fires, which a healthy run must not do; so for them the test (1) checks that
Prometheus loaded and evaluated each rule without error, and (2) queries each metric selector
the rule reads and requires series: a renamed metric or a wrong label matcher fails here. A
selector that picks error outcomes only (``grpc_code=~"Internal|..."``) is rightly empty in a
healthy run: for it the metric must have series that carry every label the matchers name.
Besides the hello flows, one flow waits on a task queue that no worker serves, so that
``flowledger_task_queue_depth`` (the queue panel, the stalled-queue alert) has a series.
Skipped only when the ``prometheus`` binary is absent (CI installs it: deploy/check.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowledger.client import FlowledgerClient
from tests.engine_service.api.conftest import BOUND_S, HELLO_DOCUMENT, published
from tests.engine_service.api.processes import (
    ServiceProcess,
    engine_env,
    free_port,
    service_process,
    store_env,
)
from tests.ops.expressions import (
    ALERTS,
    alert_rules,
    dashboard_expressions,
    selectors,
    split_selector,
)
from tests.ops.prometheus_server import Prometheus, prometheus_binary, running_prometheus

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None,
    reason="the prometheus binary is not installed (apt-get install prometheus; .ci/run does)",
)

SERIES_DEADLINE_S = 60.0
UNSERVED_QUEUE = "ops-unserved"
# A single `task` step on a queue no worker polls, without a timeout: the flow stays WAITING.
TASK_DOCUMENT = {"steps": [{"id": "handoff", "type": "task", "config": {"queue": UNSERVED_QUEUE}}]}


def target(process: ServiceProcess) -> str:
    return urllib.parse.urlsplit(process.metrics_url).netloc


@contextlib.asynccontextmanager
async def flows_running(engine: ServiceProcess) -> AsyncIterator[list[str]]:
    """Start and finish hello flows one after another until the block exits; yields the ids."""
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    done: list[str] = []
    async with FlowledgerClient(engine.address, timeout=BOUND_S) as client:
        await published(client, ns, "hello", HELLO_DOCUMENT)
        stop = asyncio.Event()

        async def drive() -> None:
            while not stop.is_set():
                started = await client.start_flow(ns, "hello", {"name": "ops"})
                await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
                done.append(started.flow_id)

        task = asyncio.create_task(drive())
        try:
            yield done
        finally:
            stop.set()
            await asyncio.wait_for(task, BOUND_S)


async def unserved_task(engine: ServiceProcess) -> str:
    """Start a flow that waits on ``UNSERVED_QUEUE`` for good; returns its namespace."""
    ns = f"ops-task-{uuid.uuid4().hex[:8]}"
    async with FlowledgerClient(engine.address, timeout=BOUND_S) as client:
        await published(client, ns, "handoff", TASK_DOCUMENT)
        await client.start_flow(ns, "handoff", {})
    return ns


async def empty_queries(prometheus: Prometheus, exprs: list[str]) -> list[str]:
    return [expr for expr in exprs if not await prometheus.query(expr)]


async def unmatched_selectors(prometheus: Prometheus, rule_selectors: list[str]) -> list[str]:
    """Selectors without series whose metric also lacks a series with the labels matched on."""
    unmatched = []
    for selector in await empty_queries(prometheus, rule_selectors):
        name, labels = split_selector(selector)
        series = await prometheus.query(name)
        if not series or not any(all(k in s["metric"] for k in labels) for s in series):
            unmatched.append(selector)
    return unmatched


async def test_dashboard_and_alert_expressions_find_series(
    migrated_database_url: str, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    dashboard = [e.expr for e in dashboard_expressions("30s")]
    rules = alert_rules()
    rule_selectors = sorted({s for rule in rules for s in selectors(rule.expr)})
    assert len(dashboard) >= 14
    assert len(rules) >= 7
    assert rule_selectors
    async with (
        service_process("store_service", store_env(migrated_database_url, free_port())) as store,
        service_process("engine_service", engine_env(store.address, gates)) as engine,
        running_prometheus(
            tmp_path,
            {"flowledger-store": target(store), "flowledger-engine": target(engine)},
            [ALERTS],
        ) as prometheus,
        flows_running(engine) as finished,
    ):
        task_ns = await unserved_task(engine)
        # The store counts queues every 15 s: its depth is 1 once a count saw the flow WAITING.
        depth = f'flowledger_task_queue_depth{{namespace="{task_ns}", queue="{UNSERVED_QUEUE}"}}'
        deadline = time.monotonic() + SERIES_DEADLINE_S
        while True:
            missing = await empty_queries(prometheus, dashboard)
            if [s["value"][1] for s in await prometheus.query(depth)] != ["1"]:
                missing.append(f"{depth} == 1")
            missing += await unmatched_selectors(prometheus, rule_selectors)
            rule_health = {r["name"]: r.get("health") for r in await prometheus.rules()}
            unhealthy = {name: h for name, h in rule_health.items() if h != "ok"}
            if finished and not missing and not unhealthy and len(rule_health) == len(rules):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"after {SERIES_DEADLINE_S}s ({len(finished)} flows finished):\n"
                    + "".join(f"  no series: {expr}\n" for expr in missing)
                    + "".join(f"  rule {n}: health {h}\n" for n, h in unhealthy.items())
                    + f"  rules loaded: {sorted(rule_health)}\n"
                    + prometheus.log.read_text()[-2000:]
                )
            await asyncio.sleep(0.5)
    # Both jobs were scraped as the targets the rules name.
    for rule in rules:
        assert rule_health[rule.where] == "ok"
