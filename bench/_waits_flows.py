"""What the waits benchmark does with flows: start them, wait for a status, read their logs,
and summarize durations. Times are wall-clock seconds (``time.time()``), comparable with the
database's event ``ts`` on the same machine."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from flowledger.client import FlowledgerClient
from flowledger.types import Event, EventType, FlowStatus

DEADLINE_S = 300.0  # the bound of every wait for flows to reach a status
READ_CONCURRENCY = 16

GREET = {"id": "greet", "type": "hello.greet", "config": {"name": "bench"}}
DONE = {"id": "done", "type": "hello.done"}


def document(*middle: dict[str, Any]) -> dict[str, Any]:
    """``greet → *middle → done``: trivial steps around the one measured."""
    return {"steps": [GREET, *middle, DONE]}


# -- statistics ----------------------------------------------------------------------------------


def stats(values_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: count, mean, min, p50, p95, p99, max (nearest-rank percentiles)."""
    ordered = sorted(v * 1000 for v in values_s)
    if not ordered:
        return {"n": 0}

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "n": len(ordered), "mean": round(sum(ordered) / len(ordered), 2),
        "min": round(ordered[0], 2), "p50": pct(0.50),
        "p95": pct(0.95), "p99": pct(0.99), "max": round(ordered[-1], 2),
    }  # fmt: skip


def rate(n: int, begin: float, end: float) -> float:
    return round(n / (end - begin), 1)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- cost: CPU by process and store calls by method ----------------------------------------------


Probes = dict[str, Callable[[], float | None]]


@dataclass(frozen=True)
class Reading:
    cpu: dict[str, float | None]
    calls: dict[str, float]


@dataclass(frozen=True)
class Meter:
    """CPU seconds of the processes involved (from /proc) and the store's RPC counters (from
    its Prometheus endpoint: ``grpc_server_started_total`` by method)."""

    probes: Probes
    store_metrics_url: str

    def read(self) -> Reading:
        cpu = {name: probe() for name, probe in self.probes.items()}
        with urllib.request.urlopen(self.store_metrics_url, timeout=10) as response:
            text = response.read().decode()
        calls: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                method = sample.labels.get("grpc_method", "?")
                # An AppendStream carries one append per message: count those, not its calls.
                counted = (
                    "grpc_server_msg_received_total"
                    if method == "AppendStream"
                    else "grpc_server_started_total"
                )
                if sample.name == counted:
                    calls[method] = calls.get(method, 0.0) + sample.value
        return Reading(cpu, calls)

    def per(self, before: Reading, units: float) -> dict[str, Any]:
        """Since ``before``, per unit (a flow, a second): CPU ms by process (None where it is
        unknown) and store calls by method."""
        after = self.read()
        cpu: dict[str, float | None] = {}
        for name, value in after.cpu.items():
            start = before.cpu.get(name)
            if value is None or start is None:
                cpu[name] = None
            else:
                cpu[name] = round((value - start) / units * 1000, 2)
        calls = {
            method: round((n - before.calls.get(method, 0.0)) / units, 2)
            for method, n in sorted(after.calls.items())
            if n > before.calls.get(method, 0.0)
        }
        return {"cpu_ms": cpu, "store_calls": calls}


# -- flows ---------------------------------------------------------------------------------------


async def publish(client: FlowledgerClient, ns: str, name: str, doc: dict[str, Any]) -> None:
    created = await client.create_definition(ns, name, doc)
    await client.publish_definition(ns, name, created.version.version)


async def start_flows(
    client: FlowledgerClient, ns: str, name: str, n: int, every_s: float = 0.0
) -> tuple[list[str], list[float]]:
    """Start ``n`` flows, all at once (``every_s`` 0) or one every ``every_s`` seconds without
    waiting for the previous start's answer: their ids, and the client's clock at each call."""
    starts = [0.0] * n
    origin = time.monotonic()

    async def one(i: int) -> str:
        if every_s:
            await asyncio.sleep(max(0.0, origin + i * every_s - time.monotonic()))
        starts[i] = time.time()
        return (await client.start_flow(ns, name, {"name": f"n{i}"})).flow_id

    return list(await asyncio.gather(*(one(i) for i in range(n)))), starts


async def count(client: FlowledgerClient, ns: str, status: FlowStatus) -> int:
    total, token = 0, ""
    while True:
        page = await client.list_flows(ns, statuses=(status,), page_size=1000, page_token=token)
        total += len(page.flows)
        if not (token := page.next_page_token):
            return total


async def until_status(client: FlowledgerClient, ns: str, status: FlowStatus, n: int) -> None:
    """Until ``n`` flows of ``ns`` have ``status``. Polled: watching each flow would load the
    engine and store with the watchers' own reads while the flows wait."""
    async with asyncio.timeout(DEADLINE_S):
        while await count(client, ns, status) < n:
            if await count(client, ns, FlowStatus.FAILED):
                raise SystemExit(f"flows of namespace {ns} failed")
            await asyncio.sleep(0.1)


async def logs(client: FlowledgerClient, ns: str, flow_ids: Sequence[str]) -> list[list[Event]]:
    """Each ended flow's whole log, read back from the store, so that every ``ts`` is the
    database's (a live watch's pushed events carry the engine's clock)."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(flow_id: str) -> list[Event]:
        async with gate:
            events: list[Event] = []
            async for update in client.watch_flow(ns, flow_id):
                events.extend(update.events)
                if update.status.terminal:
                    return events
            raise SystemExit(f"flow {flow_id}: its watch ended before the flow did")

    return list(await asyncio.gather(*(one(f) for f in flow_ids)))


@dataclass(frozen=True)
class Ran:
    logs: list[list[Event]]
    starts: list[float]  # the client's clock at each StartFlow call
    cost: dict[str, Any]  # per flow, from starting them until all had completed


async def run_flows(
    client: FlowledgerClient, meter: Meter, ns: str, name: str, n: int, every_s: float = 0.0
) -> Ran:
    """Start ``n`` flows, wait until all completed, then read their logs (outside the cost)."""
    if n == 0:
        return Ran([], [], {})
    done_before = await count(client, ns, FlowStatus.COMPLETED)
    before = meter.read()
    flow_ids, starts = await start_flows(client, ns, name, n, every_s)
    await until_status(client, ns, FlowStatus.COMPLETED, done_before + n)
    cost = meter.per(before, n)
    return Ran(await logs(client, ns, flow_ids), starts, cost)


def event(log: Sequence[Event], kind: EventType, step_id: str | None = None) -> Event:
    """The first event of ``kind`` (of step ``step_id``) in a flow's log."""
    for e in log:
        payload = e.payload
        if e.type is kind and (step_id is None or (
            isinstance(payload, dict) and payload.get("step_id") == step_id
        )):  # fmt: skip
            return e
    raise SystemExit(f"no {kind.value} event of step {step_id} in flow {log[0].flow_id}")


def ts(log: Sequence[Event], kind: EventType, step_id: str | None = None) -> float:
    """The database's clock at the append of that event."""
    moment = event(log, kind, step_id).ts
    assert moment is not None
    return moment.timestamp()


def step_times(flow_logs: Sequence[Sequence[Event]], step_id: str) -> list[float]:
    """The step's StepFinished ``ts`` - the ``ts`` of the append that started it."""
    return [
        ts(log, EventType.STEP_FINISHED, step_id) - ts(log, EventType.STEP_STARTED, step_id)
        for log in flow_logs
    ]


def diffs(ends: Sequence[float], begins: Sequence[float], minus: float = 0.0) -> list[float]:
    return [e - b - minus for e, b in zip(ends, begins, strict=True)]
