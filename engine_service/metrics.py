"""Domain metrics of the engine service (``flowledger_engine_*``), with units in their names.

Labels are bounded: step types come from the registry (a deployment's own list), outcomes and
sources are fixed words; never a flow id. gRPC metrics (``grpc_server_*`` for the EngineService,
``grpc_client_*`` for calls to the store) come from the shared interceptors.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

FLOWS_STARTED = Counter(
    "flowledger_engine_flows_started_total",
    "Flows started through StartFlow or BranchFlow (an idempotent repeat is not counted).",
    ["kind"],
)
FLOWS_COMPLETED = Counter(
    "flowledger_engine_flows_completed_total", "Flows this replica ran to completion."
)
FLOWS_FAILED = Counter(
    "flowledger_engine_flows_failed_total", "Flows this replica saw fail (a step failed for good)."
)
FLOWS_RUNNING = Gauge(
    "flowledger_engine_flows_running", "Flows this replica is running now (each holds a lease)."
)
STEP_DURATION = Histogram(
    "flowledger_engine_step_duration_seconds",
    "Time to run one step to its recorded end (store round trips included), by step type and "
    "outcome (finished, failed).",
    ["step_type", "outcome"],
    buckets=_STEP_BUCKETS,
)
LEASE_CLAIMS = Counter(
    "flowledger_engine_lease_claims_total",
    "Leases claimed, by source (start: the replica that received StartFlow; poll: the work loop).",
    ["source"],
)
LEASE_TAKEOVERS = Counter(
    "flowledger_engine_lease_takeovers_total",
    "Claims that took a flow over from a lease that expired without being released (its "
    "holder died, paused or lost the store); not starts, nor resumes after a wait.",
)
LEASES_LOST = Counter(
    "flowledger_engine_leases_lost_total",
    "Runs stopped because their lease was lost (expired, taken over, or refused on write).",
)
STEP_REEXECUTIONS = Counter(
    "flowledger_engine_step_reexecutions_total",
    "Step attempts run again because they were started before this run (a takeover of a replica "
    "that died, paused or lost the store, or a restart): at-least-once, made visible; the attempt "
    "keeps its idempotency key.",
    ["step_type"],
)
LEASE_RENEWALS = Counter(
    "flowledger_engine_lease_renewals_total", "Lease renewals, by outcome (ok, lost, error).",
    ["outcome"],
)
REPLAY_DURATION = Histogram(
    "flowledger_engine_replay_duration_seconds",
    "Time to load a flow's state (snapshot + tail) when a replica takes it up or describes it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STORE_UP = Gauge(
    "flowledger_engine_store_up", "1 when the last health probe of the store succeeded, else 0."
)

# Known label values start at 0 so that rates and alerts see a series before the first event.
for _kind in ("start", "branch"):
    FLOWS_STARTED.labels(_kind)
for _source in ("start", "poll"):
    LEASE_CLAIMS.labels(_source)
for _outcome in ("ok", "lost", "error"):
    LEASE_RENEWALS.labels(_outcome)
