"""The waits benchmark's report as text (its JSON form is the dict itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def ms(s: Mapping[str, float], *keys: str) -> str:
    return " / ".join(f"{s[k]:.0f}" if k in s else "-" for k in keys)


def cost(c: Mapping[str, Any], unit: str = "flow") -> str:
    """CPU ms by process and store calls by method, per ``unit``."""
    cpu = ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in c["cpu_ms"].items())
    calls = c["store_calls"]
    listed = ", ".join(f"{k} {v:.1f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))
    return (
        f"\n    per {unit}: CPU ms {cpu}"
        f"\n    per {unit}: {sum(calls.values()):.1f} store calls ({listed})"
    )


def print_report(report: Mapping[str, Any]) -> None:
    m = report["machine"]
    print(
        f"\nmachine: {m['nproc']} x {m['cpu_model']} ({m['arch']}), 1-min load"
        f" {m['load_1min_before']} before / {report['load_1min_after']} after, Python"
        f" {m['python']}, Postgres {m['postgres']} (fsync={m['fsync']})"
    )
    print("\ntimers: lateness = TimerFired ts - fire_at (ms: p50 / p95 / p99 / max);"
          " others p50 / p99")  # fmt: skip
    for t in report["timers"]:
        print(
            f"  poll {t['poll_ms']:>3} ms x{t['replicas']} {t['pattern']:<5} {t['flows']:>3} flows"
            f" wait {t['wait_s']} s: lateness {ms(t['lateness_ms'], 'p50', 'p95', 'p99', 'max')}"
            f" | fired->completed {ms(t['fired_to_completed_ms'], 'p50', 'p99')}"
            f" | run-wait {ms(t['run_minus_wait_ms'], 'p50', 'p99')}"
            f" | baseline run {ms(t['baseline_run_ms'], 'p50', 'p99')}"
            f" | fire_at spread {t['fire_at_spread_ms']:.0f}"
            f"{cost(t['cost']) if t['pattern'] == 'burst' else ''}"
        )
    print("\nsignals (ms: p50 / p99):")
    for label, p in report["signals"].items():
        print(
            f"  {label:<10} {p['signals']:>3} signals: rpc {ms(p['rpc_ms'], 'p50', 'p99')}"
            f" | answer->StepFinished {ms(p['response_to_step_finished_ms'], 'p50', 'p99')}"
            f" | sent->StepFinished {ms(p['sent_to_step_finished_ms'], 'p50', 'p99')}"
        )
        if "signals_per_s" in p:
            print(
                f"             {p['senders']} senders: {p['signals_per_s']} signals/s,"
                f" {p['resumed_steps_per_s']} resumed steps/s;"
                f"{cost(p['cost_per_signal'], 'signal')}"
            )
    print("\ntasks (ms: p50 / p99):")
    for b in report["task_baseline"]:
        print(
            f"  in-engine step    {b['pattern']:<5} {b['flows']:>3} flows: {b['flows_per_s']}"
            f" flows/s | step {ms(b['step_ms'], 'p50', 'p99')}"
            f" | run {ms(b['run_ms'], 'p50', 'p99')}"
            f"{cost(b['cost'])}"
        )
    for t in report["tasks"]:
        print(
            f"  worker, {t['pollers']} poller(s) {t['pattern']:<5} {t['flows']:>3} flows:"
            f" {t['flows_per_s']} flows/s, {t['tasks_per_s']} tasks/s,"
            f" {t['deliveries']} deliveries"
            f" | step {ms(t['step_ms'], 'p50', 'p99')}"
            f" | scheduled->delivered {ms(t['scheduled_to_delivered_ms'], 'p50', 'p99')}"
            f" | delivered->reported {ms(t['delivered_to_reported_ms'], 'p50', 'p99')}"
            f" | run {ms(t['run_ms'], 'p50', 'p99')}"
            f"{cost(t['cost'])}{cost(t['idle_cost_per_s'], 'second idle')}"
        )
