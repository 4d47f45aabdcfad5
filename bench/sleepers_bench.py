"""Long sleeps benchmark (issue 19): N flows that sleep a year, and what they cost while asleep.

    .venv/bin/python -m bench.sleepers_bench [--flows 10000] [--json PATH] [--database NAME]

Uses ``DATABASE_URL`` (an admin URL) when set, else a throwaway local Postgres (fsync on). The
store and one engine run as their own processes. The client publishes ``greet -> wait
{duration: 365d} -> done`` and starts ``--flows`` flows from 16 concurrent starters, then waits
(bounded) until the store has all of them WAITING. Printed and written as JSON:

* the engine's resident memory (VmRSS from /proc) before the flows, once they all sleep, and
  after an engine restart with all of them asleep (what sleeping flows cost a replica: nothing it
  must hold, since a sleeping flow is a row with a wake time);
* the store's rows per sleeping flow: events (by type), artifacts, and the flows row;
* the rate at which flows reached WAITING.

Nothing here asserts a speed or a size (tests/bench/test_sleepers_bench.py runs a small N and
checks the report's shape and counts); figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psycopg

from bench._common import fresh_database, postgres_url
from bench.engine_bench import service_env, start_service, stop
from flowctl.devserver.postgres import free_port
from flowledger.client import FlowledgerClient

NAMESPACE = "sleepers"
DEFINITION = "sleeps-a-year"
DOCUMENT = {"steps": [
    {"id": "greet", "type": "hello.greet", "config": {"name": "sleeper"}},
    {"id": "sleep", "type": "wait", "config": {"duration": "365d", "reason": "benchmark"}},
    {"id": "done", "type": "hello.done"},
]}  # fmt: skip
STARTERS = 16
DEADLINE_S = 1800.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def start_all(addr: str, flows: int) -> float:
    """Publish the definition and start ``flows`` flows; seconds it took."""
    async with FlowledgerClient(addr, timeout=60) as client:
        created = await client.create_definition(NAMESPACE, DEFINITION, DOCUMENT)
        if created.version.state.value != "published":
            await client.publish_definition(NAMESPACE, DEFINITION, created.version.version)
        todo = iter(range(flows))
        began = time.perf_counter()

        async def starter() -> None:
            for i in todo:
                await client.start_flow(NAMESPACE, DEFINITION, {"n": i})

        await asyncio.gather(*(starter() for _ in range(STARTERS)))
        return time.perf_counter() - began


def waiting(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM flows WHERE namespace = %s AND status = 'waiting'", [NAMESPACE]
        ).fetchone()
    assert row is not None
    return int(row[0])


def rows_per_flow(url: str, flows: int) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        by_type: dict[str, int] = dict(conn.execute(
            "SELECT e.event_type, count(*) FROM event_log e JOIN flows f USING (flow_id) "
            "WHERE f.namespace = %s GROUP BY e.event_type ORDER BY 1", [NAMESPACE],
        ).fetchall())  # fmt: skip
        artifacts = conn.execute(
            "SELECT count(*) FROM artifact_refs WHERE namespace = %s", [NAMESPACE]
        ).fetchone()
        flow_rows = conn.execute(
            "SELECT count(*), coalesce(sum(pg_column_size(f.*)), 0) FROM flows f "
            "WHERE namespace = %s", [NAMESPACE],
        ).fetchone()  # fmt: skip
    assert artifacts is not None
    assert flow_rows is not None
    return {
        "events_per_flow": {k: v / flows for k, v in by_type.items()},
        "events_per_flow_total": sum(by_type.values()) / flows,
        "artifacts_total": int(artifacts[0]),  # content-addressed: shared by equal outputs
        "flows_rows": int(flow_rows[0]),
        "flows_row_bytes_avg": int(flow_rows[1]) / max(int(flow_rows[0]), 1),
    }


def run(url: str, flows: int) -> dict[str, Any]:
    store_addr, engine_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    engine_env = service_env(
        STORE_ADDR=store_addr, ENGINE_LISTEN=engine_addr,
        ENGINE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    store = start_service("store_service", service_env(
        DATABASE_URL=url, STORE_LISTEN=store_addr,
        STORE_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
    ), store_addr)  # fmt: skip
    try:
        engine = start_service("engine_service", engine_env, engine_addr)
        try:
            before = rss_kib(engine.pid)
            seconds = asyncio.run(start_all(engine_addr, flows))
            deadline = time.monotonic() + DEADLINE_S
            while (asleep := waiting(url)) < flows:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {asleep} of {flows} flows reached WAITING")
                time.sleep(0.5)
            asleep_rss = rss_kib(engine.pid)
        finally:
            stop(engine)
        engine = start_service("engine_service", engine_env, engine_addr)
        try:
            time.sleep(2.0)  # a few poll periods: it would claim anything due (nothing is)
            restarted_rss = rss_kib(engine.pid)
            still = waiting(url)
        finally:
            stop(engine)
    finally:
        stop(store)
    return {
        "flows": flows,
        "start_seconds": seconds,
        "flows_per_second_to_waiting": flows / seconds,
        "engine_rss_kib": {
            "before": before, "all_asleep": asleep_rss, "restarted_all_asleep": restarted_rss,
        },
        "engine_rss_per_sleeping_flow_bytes": (asleep_rss - before) * 1024 / flows,
        "still_waiting_after_restart": still,
        "store": rows_per_flow(url, flows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--database", default="fl_sleepers_bench")
    args = parser.parse_args()
    with postgres_url() as admin:
        url = fresh_database(admin, args.database)
        report = run(url, args.flows)
    rss = report["engine_rss_kib"]
    print(f"sleepers: {report['flows']} flows asleep for a year, "
          f"{report['flows_per_second_to_waiting']:.0f} flows/s to WAITING")
    print(f"engine RSS: before {rss['before']} KiB, all asleep {rss['all_asleep']} KiB "
          f"({report['engine_rss_per_sleeping_flow_bytes']:.0f} B/flow), after a restart "
          f"{rss['restarted_all_asleep']} KiB; still waiting: "
          f"{report['still_waiting_after_restart']}")
    store = report["store"]
    print(f"store per sleeping flow: {store['events_per_flow_total']:.1f} events "
          f"{store['events_per_flow']}, 1 flows row ({store['flows_row_bytes_avg']:.0f} B), "
          f"{store['artifacts_total']} artifacts in all")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
