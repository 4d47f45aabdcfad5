"""Durable-waits benchmark: timers, signals and external tasks (decision 0013), in one run.

    .venv/bin/python -m bench.waits_bench [--quick] [--json PATH] [--database NAME]

Uses ``DATABASE_URL`` (an admin URL) when set, else starts a throwaway local Postgres (fsync on).
The store and 1 or 2 engine replicas run as their own processes (as in engine_bench); this
process is the client; task workers run in one more process (bench/_waits_worker.py).

* **Timers.** Flows ``greet → wait(S s) → done``, started all at once (a burst) or paced (one
  every 50 ms, a light load). Lateness = the TimerFired event's ``ts`` - the ``fire_at`` its
  TimerStarted recorded. Measured per ENGINE_POLL_MS setting and with two replicas, each next to
  a baseline on the same engines: the same flows without the wait (``greet → done``), whose run
  time (FlowCompleted ``ts`` - the client's start) is the ordinary cost of a flow at that load.
* **Signals.** Flows ``greet → signal(go) → done`` wait; the client signals them one at a time
  (each flow ends before the next signal), then from 16 concurrent senders. Resume latency = the
  signal step's StepFinished ``ts`` - the moment SignalFlow's answer arrived (and - when it was
  sent).
* **Tasks.** Flows ``greet → task(queue) → done`` served by one TaskWorker process with K
  pollers, against the baseline ``greet → shout → done`` where shout is the same work done in
  the engine. Step time = the step's StepFinished ``ts`` - the ``ts`` of the append that started
  it; scheduled→delivered = TaskScheduled ``ts`` → the handler gets the task; delivered→reported
  = the handler plus its CompleteTask call, in the worker.

Client, worker, engine and Postgres clocks are compared, so all must run on one machine. An
event's ``ts`` is Postgres' ``now()`` in the append transaction (its start, a few ms before
commit). CPU per flow is by process, from /proc. Figures go to docs/benchmarks.md; nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import _waits_flows as f
from bench._common import fresh_database, postgres_cpu, postgres_url, process_cpu
from bench._waits_report import print_report
from bench.engine_bench import service_env, start_service, stop
from flowctl.devserver.postgres import free_port
from flowledger.client import FlowledgerClient
from flowledger.types import Event, FlowStatus
from flowledger.types import EventType as E

SENDERS = 16
PACE_S = 0.05
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scale:
    burst: int  # timer flows started at once
    paced: int  # timer flows started one every PACE_S
    wait_s: float
    poll_ms: tuple[int, ...]  # the first is the default, used for everything else
    signal_sequential: int
    signal_concurrent: int
    task_flows: int
    pollers: tuple[int, ...]
    warmup: int  # flows run before each measured set (connections, definition caches)
    idle_s: float  # how long the cost of idle task pollers is measured


FULL = Scale(200, 40, 2.0, (500, 100), 100, 400, 300, (1, 8), 8, 5.0)
# Waits under inline_wait_ms (1 s) are slept through in the run, not made durable: stay above.
QUICK = Scale(8, 3, 1.05, (500, 100), 3, 8, 8, (2,), 0, 0.5)


@dataclass(frozen=True)
class Stack:
    """One configuration's engine replicas, and the meter of every process involved."""

    addrs: tuple[str, ...]
    meter: f.Meter

    @property
    def addr(self) -> str:
        return self.addrs[0]  # the replica clients talk to


# -- services ------------------------------------------------------------------------------------


@contextlib.contextmanager
def store(url: str) -> Iterator[tuple[str, int, str]]:
    """The store: its address, pid and metrics URL."""
    addr, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = service_env(DATABASE_URL=url, STORE_LISTEN=addr, STORE_METRICS_LISTEN=metrics)
    proc = start_service("store_service", env, addr)
    try:
        yield addr, proc.pid, f"http://{metrics}/metrics"
    finally:
        stop(proc)


@contextlib.contextmanager
def engines(base: f.Meter, store_addr: str, replicas: int, poll_ms: int) -> Iterator[Stack]:
    """``replicas`` engines polling every ``poll_ms``, metered along with ``base``'s processes."""
    procs: list[subprocess.Popen[bytes]] = []
    addrs: list[str] = []
    try:
        for _ in range(replicas):
            addrs.append(f"127.0.0.1:{free_port()}")
            env = service_env(
                STORE_ADDR=store_addr, ENGINE_LISTEN=addrs[-1], ENGINE_POLL_MS=str(poll_ms),
                ENGINE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            )  # fmt: skip
            procs.append(start_service("engine_service", env, addrs[-1]))
        pids = [p.pid for p in procs]
        probes = {**base.probes, "engine": lambda: _total([process_cpu(pid) for pid in pids])}
        yield Stack(tuple(addrs), f.Meter(probes, base.store_metrics_url))
    finally:
        for proc in procs:
            stop(proc)


def _total(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if len(known) == len(values) else None


@contextlib.contextmanager
def task_worker(stack: Stack, ns: str, queue: str, pollers: int) -> Iterator[list[dict[str, Any]]]:
    """A TaskWorker process for the block (metered as "worker"); afterwards the list holds
    its per-task timings."""
    timings: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.jsonl"
        argv = [sys.executable, "-m", "bench._waits_worker", stack.addr, ns, queue, str(pollers),
                str(out)]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=REPO, env=service_env())
        stack.meter.probes["worker"] = lambda: process_cpu(proc.pid)
        try:
            yield timings
        finally:
            del stack.meter.probes["worker"]
            stop(proc)
        if proc.returncode != 0:
            raise SystemExit(f"the task worker exited with {proc.returncode}")
        timings.extend(json.loads(line) for line in out.read_text().splitlines())


# -- timers --------------------------------------------------------------------------------------


async def timers(stack: Stack, scale: Scale, poll_ms: int, pattern: str) -> dict[str, Any]:
    n, every = (scale.burst, 0.0) if pattern == "burst" else (scale.paced, PACE_S)
    ns = f"timers-p{poll_ms}-r{len(stack.addrs)}-{pattern}"
    wait = {"id": "nap", "type": "wait", "config": {"seconds": scale.wait_s}}
    meter = stack.meter
    async with FlowledgerClient(stack.addr) as client:
        await f.publish(client, ns, "waited", f.document(wait))
        await f.publish(client, ns, "plain", f.document())
        await f.run_flows(client, meter, ns, "plain", scale.warmup)
        base = await f.run_flows(client, meter, ns, "plain", n, every)
        waited = await f.run_flows(client, meter, ns, "waited", n, every)
    fire_at = [f.parse_time(str(_payload(f.event(log, E.TIMER_STARTED))["fire_at"]))
               for log in waited.logs]  # fmt: skip
    fired = [f.ts(log, E.TIMER_FIRED) for log in waited.logs]
    completed = [f.ts(log, E.FLOW_COMPLETED) for log in waited.logs]
    return {
        "poll_ms": poll_ms, "replicas": len(stack.addrs), "pattern": pattern, "flows": n,
        "wait_s": scale.wait_s,
        "lateness_ms": f.stats(f.diffs(fired, fire_at)),
        "fire_at_spread_ms": round((max(fire_at) - min(fire_at)) * 1000, 1),
        "fired_to_completed_ms": f.stats(f.diffs(completed, fired)),
        "run_minus_wait_ms": f.stats(f.diffs(completed, waited.starts, scale.wait_s)),
        "baseline_run_ms": f.stats(
            f.diffs([f.ts(log, E.FLOW_COMPLETED) for log in base.logs], base.starts)
        ),
        "cost": waited.cost, "baseline_cost": base.cost,
    }  # fmt: skip


def _payload(event: Event) -> dict[str, Any]:
    payload = event.payload
    assert isinstance(payload, dict)
    return payload


# -- signals -------------------------------------------------------------------------------------


async def signals(stack: Stack, scale: Scale) -> dict[str, Any]:
    ns = "signals"
    step = {"id": "gate", "type": "signal", "config": {"name": "go"}}
    total = scale.signal_sequential + scale.signal_concurrent
    sent, answered = [0.0] * total, [0.0] * total
    async with FlowledgerClient(stack.addr) as client:
        await f.publish(client, ns, "gated", f.document(step))
        flow_ids, _ = await f.start_flows(client, ns, "gated", total)
        await f.until_status(client, ns, FlowStatus.WAITING, total)

        async def deliver(i: int) -> None:
            sent[i] = time.time()
            result = await client.signal_flow(ns, flow_ids[i], "go", {"message": f"go {i}"})
            answered[i] = time.time()
            if not result.resumed:
                raise SystemExit(f"the signal to flow {flow_ids[i]} resumed nothing")

        for i in range(scale.signal_sequential):
            await deliver(i)
            await client.wait_for_flow(ns, flow_ids[i], within=f.DEADLINE_S)
        share = range(scale.signal_sequential, total)

        async def sender(part: range) -> None:
            for i in part:
                await deliver(i)

        before = stack.meter.read()
        await asyncio.gather(*(sender(share[s::SENDERS]) for s in range(SENDERS)))
        await f.until_status(client, ns, FlowStatus.COMPLETED, total)
        cost = stack.meter.per(before, len(share))
        logs = await f.logs(client, ns, flow_ids)
    finished = [f.ts(log, E.STEP_FINISHED, "gate") for log in logs]

    def phase(part: range) -> dict[str, Any]:
        return {
            "signals": len(part),
            "rpc_ms": f.stats([answered[i] - sent[i] for i in part]),
            "response_to_step_finished_ms": f.stats([finished[i] - answered[i] for i in part]),
            "sent_to_step_finished_ms": f.stats([finished[i] - sent[i] for i in part]),
        }

    begin = min(sent[i] for i in share)
    concurrent = {
        **phase(share), "senders": SENDERS,
        "signals_per_s": f.rate(len(share), begin, max(answered[i] for i in share)),
        "resumed_steps_per_s": f.rate(len(share), begin, max(finished[i] for i in share)),
        "cost_per_signal": cost,
    }  # fmt: skip
    return {"sequential": phase(range(scale.signal_sequential)), "concurrent": concurrent}


# -- tasks ---------------------------------------------------------------------------------------


def _task_load(scale: Scale, pattern: str) -> tuple[int, float]:
    # Paced: 10 flows/s, within what one poller handles.
    return (scale.task_flows, 0.0) if pattern == "burst" else (scale.paced, PACE_S * 2)


async def tasks(stack: Stack, scale: Scale, pollers: int, pattern: str) -> dict[str, Any]:
    """Task flows started as ``pattern`` while a worker of ``pollers`` pollers runs."""
    n, every = _task_load(scale, pattern)
    ns, queue = f"tasks-k{pollers}-{pattern}", f"q{pollers}-{pattern}"
    step = {"id": "work", "type": "task", "config": {"queue": queue}}
    async with FlowledgerClient(stack.addr) as client:
        await f.publish(client, ns, "tasked", f.document(step))
        with task_worker(stack, ns, queue, pollers) as timings:
            await f.run_flows(client, stack.meter, ns, "tasked", scale.warmup)
            before = stack.meter.read()
            await asyncio.sleep(scale.idle_s)  # nothing queued: what polling alone costs
            idle = stack.meter.per(before, scale.idle_s)
            ran = await f.run_flows(client, stack.meter, ns, "tasked", n, every)
    by_flow = {t["flow_id"]: t for t in timings}
    mine = [by_flow[log[0].flow_id] for log in ran.logs]
    # More deliveries than flows: a task was handed out again (its lease expired or was lost).
    ids = set(by_flow) & {log[0].flow_id for log in ran.logs}
    deliveries = sum(1 for t in timings if t["flow_id"] in ids)
    scheduled = [f.ts(log, E.TASK_SCHEDULED) for log in ran.logs]
    delivered = [float(t["delivered"]) for t in mine]
    reported = [float(t["reported"]) for t in mine]
    finished = [f.ts(log, E.STEP_FINISHED, "work") for log in ran.logs]
    completed = [f.ts(log, E.FLOW_COMPLETED) for log in ran.logs]
    return {
        "pollers": pollers, "pattern": pattern, "flows": n, "deliveries": deliveries,
        "tasks_per_s": f.rate(n, min(scheduled), max(finished)),
        "flows_per_s": f.rate(n, min(ran.starts), max(completed)),
        "scheduled_to_delivered_ms": f.stats(f.diffs(delivered, scheduled)),
        "delivered_to_reported_ms": f.stats(f.diffs(reported, delivered)),
        "step_ms": f.stats(f.step_times(ran.logs, "work")),
        "run_ms": f.stats(f.diffs(completed, ran.starts)),
        "cost": ran.cost, "idle_cost_per_s": idle,
    }  # fmt: skip


async def in_engine(stack: Stack, scale: Scale, pattern: str) -> dict[str, Any]:
    """The baseline of :func:`tasks`: the same work as an in-engine step."""
    n, every = _task_load(scale, pattern)
    ns = f"tasks-baseline-{pattern}"
    async with FlowledgerClient(stack.addr) as client:
        await f.publish(client, ns, "shouted", f.document({"id": "work", "type": "hello.shout"}))
        await f.run_flows(client, stack.meter, ns, "shouted", scale.warmup)
        ran = await f.run_flows(client, stack.meter, ns, "shouted", n, every)
    completed = [f.ts(log, E.FLOW_COMPLETED) for log in ran.logs]
    return {
        "pattern": pattern, "flows": n,
        "flows_per_s": f.rate(n, min(ran.starts), max(completed)),
        "step_ms": f.stats(f.step_times(ran.logs, "work")),
        "run_ms": f.stats(f.diffs(completed, ran.starts)),
        "cost": ran.cost,
    }  # fmt: skip


# -- the run -------------------------------------------------------------------------------------


async def measure(base: f.Meter, store_addr: str, scale: Scale) -> dict[str, Any]:
    report: dict[str, Any] = {"timers": [], "tasks": []}
    default_poll = scale.poll_ms[0]
    for poll_ms in scale.poll_ms:
        with engines(base, store_addr, 1, poll_ms) as stack:
            for pattern in ("paced", "burst"):
                report["timers"].append(await timers(stack, scale, poll_ms, pattern))
            if poll_ms != default_poll:
                continue
            report["signals"] = await signals(stack, scale)
            report["task_baseline"] = [
                await in_engine(stack, scale, "paced"),
                await in_engine(stack, scale, "burst"),
            ]
            report["tasks"].append(await tasks(stack, scale, 1, "paced"))
            for k in scale.pollers:
                report["tasks"].append(await tasks(stack, scale, k, "burst"))
    with engines(base, store_addr, 2, default_poll) as stack:
        for pattern in ("paced", "burst"):
            report["timers"].append(await timers(stack, scale, default_poll, pattern))
    return report


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine(admin_url: str, load: float) -> dict[str, Any]:
    with psycopg.connect(admin_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu_model(), "arch": platform.machine(),
        "python": platform.python_version(), "postgres": version[0] if version else "?",
        "fsync": fsync[0] if fsync else "?", "load_1min_before": round(load, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run (the smoke test's)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--database", default="flowledger_waits_bench",
                        help="the database to (re)create on the server")  # fmt: skip
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    # Before we add our own: the machine may be shared, and the figures depend on it.
    load_before = os.getloadavg()[0]
    with postgres_url() as admin_url:
        report: dict[str, Any] = {"machine": machine(admin_url, load_before), "quick": args.quick}
        with store(fresh_database(admin_url, args.database)) as (store_addr, pid, metrics):
            probes: f.Probes = {
                "client": lambda: process_cpu(os.getpid()),
                "store": lambda: process_cpu(pid),
                "postgres": postgres_cpu(admin_url),
            }
            base = f.Meter(probes, metrics)
            report.update(asyncio.run(measure(base, store_addr, scale)))
    report["load_1min_after"] = round(os.getloadavg()[0], 2)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
