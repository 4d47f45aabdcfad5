"""Domain metrics of the store (``flowledger_*``), with units in their names.

Labels are bounded: event types, retry reasons and outcomes, never a flow id. The gRPC server
metrics (``grpc_server_*``) are recorded by the shared interceptor in ``flowledger_core.server``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPENDED = Counter(
    "flowledger_events_appended_total",
    "Events appended to the event log, by event type.",
    ["event_type"],
)
APPEND_BATCH_EVENTS = Histogram(
    "flowledger_append_batch_events",
    "Events per append command.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
)
GROUP_COMMIT_COMMANDS = Histogram(
    "flowledger_group_commit_commands",
    "Append commands sharing one Postgres transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
APPEND_DURATION = Histogram(
    "flowledger_append_duration_seconds",
    "Time from an append command's arrival at the backend to its commit.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRIES = Counter(
    "flowledger_store_retries_total",
    "Database operations retried, by reason (serialization, deadlock, connection).",
    ["reason"],
)
VERSION_CONFLICTS = Counter(
    "flowledger_version_conflicts_total",
    "Appends refused because expected_version was stale.",
)
DUPLICATE_COMMANDS = Counter(
    "flowledger_duplicate_commands_total",
    "Commands whose command_id had already been applied (answered from the first result).",
)
ARTIFACTS_WRITTEN = Counter(
    "flowledger_artifacts_written_total",
    "Artifacts offered with appends, by outcome (inserted, deduplicated).",
    ["outcome"],
)
SNAPSHOTS_SAVED = Counter("flowledger_snapshots_saved_total", "Snapshots saved.")
SNAPSHOTS_LOADED = Counter(
    "flowledger_snapshots_loaded_total", "Snapshot loads, by outcome (hit, miss).", ["outcome"]
)
POOL_SIZE = Gauge("flowledger_db_pool_connections", "Connections currently open in the pool.")
POOL_IN_USE = Gauge("flowledger_db_pool_connections_in_use", "Connections lent out of the pool.")
POOL_WAITING = Gauge("flowledger_db_pool_requests_waiting", "Requests waiting for a connection.")
SUBSCRIBERS = Gauge("flowledger_feed_subscribers", "Open global-feed subscriptions.")
FLOWS = Gauge(
    "flowledger_flows",
    "Flows in the store by status (deleted flows excluded), counted periodically.",
    ["status"],
)
FLOWS_OVERDUE = Gauge(
    "flowledger_flows_overdue",
    "Runnable flows (queued, running) with no live lease for longer than the overdue threshold: "
    "no engine has taken them up within their deadline.",
)
FLOWS_WAITING_DUE = Gauge(
    "flowledger_flows_waiting_due",
    "Waiting flows whose wake_at has passed and that no engine holds yet (a backlog of timers), "
    "counted periodically.",
)
# Labelled by namespace and queue: both are names operators choose (flows carry no free-form
# queue), and a queue's series is removed once it has no waiting flow left.
TASK_QUEUE_DEPTH = Gauge(
    "flowledger_task_queue_depth",
    "Flows waiting on a task queue that no task worker holds, by namespace and queue, counted "
    "periodically.",
    ["namespace", "queue"],
)

# Every known label value starts at 0, so rates and alerts see a series before the first event
# (Prometheus' "avoid missing metrics" advice); the sets are closed, so cardinality stays bounded.
for _reason in ("serialization", "deadlock", "connection"):
    RETRIES.labels(_reason)
for _outcome in ("inserted", "deduplicated"):
    ARTIFACTS_WRITTEN.labels(_outcome)
for _outcome in ("hit", "miss"):
    SNAPSHOTS_LOADED.labels(_outcome)
