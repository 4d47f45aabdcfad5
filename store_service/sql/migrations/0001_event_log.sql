-- 0001: flows, the append-only event log, artifacts, commands, snapshots.
-- Every statement is idempotent (IF NOT EXISTS) and the runner applies the file in one transaction.

CREATE TABLE IF NOT EXISTS flows (
    flow_id           UUID PRIMARY KEY,
    namespace         TEXT NOT NULL CHECK (length(namespace) BETWEEN 1 AND 128),
    name              TEXT NOT NULL CHECK (length(name) <= 256),
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- A branch points at its parent and the parent generation/version it forks at (copy-on-write).
    parent_flow_id    UUID NULL REFERENCES flows (flow_id) ON DELETE RESTRICT,
    parent_generation BIGINT NULL,
    fork_version      BIGINT NOT NULL DEFAULT 0 CHECK (fork_version >= 0),
    -- Head of the log: version of the last readable event, and the current generation (bumped by prune).
    version           BIGINT NOT NULL DEFAULT 0 CHECK (version >= 0),
    generation        BIGINT NOT NULL DEFAULT 0 CHECK (generation >= 0),
    created_by        TEXT NOT NULL DEFAULT '',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deleting a branch is recorded here; rows of event_log are never touched.
    deleted_at        TIMESTAMPTZ NULL,
    deleted_by        TEXT NULL,
    delete_reason     TEXT NULL,
    -- Work leases of engine replicas; every write may carry lease_token as a fencing token.
    lease_owner       TEXT NULL,
    lease_token       BIGINT NOT NULL DEFAULT 0,
    lease_expires_at  TIMESTAMPTZ NULL
);

CREATE INDEX IF NOT EXISTS flows_namespace_created_idx
    ON flows (namespace, created_at DESC, flow_id DESC);
CREATE INDEX IF NOT EXISTS flows_namespace_status_idx ON flows (namespace, status);
CREATE INDEX IF NOT EXISTS flows_parent_idx ON flows (parent_flow_id);

-- One row per generation of a flow. Events of (flow_id, generation) have version > base_version;
-- versions <= base_version are read from (inherit_flow_id, inherit_generation). A branch's
-- generation 0 inherits from its parent; a prune opens generation g+1 inheriting from g.
CREATE TABLE IF NOT EXISTS flow_generations (
    flow_id            UUID NOT NULL REFERENCES flows (flow_id) ON DELETE RESTRICT,
    generation         BIGINT NOT NULL CHECK (generation >= 0),
    base_version       BIGINT NOT NULL CHECK (base_version >= 0),
    inherit_flow_id    UUID NULL,
    inherit_generation BIGINT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by         TEXT NOT NULL DEFAULT '',
    reason             TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (flow_id, generation),
    -- Either both inherit columns are set (they name an existing generation) or neither.
    CONSTRAINT flow_generations_inherit_check
        CHECK ((inherit_flow_id IS NULL) = (inherit_generation IS NULL)),
    CONSTRAINT flow_generations_inherit_fkey
        FOREIGN KEY (inherit_flow_id, inherit_generation)
        REFERENCES flow_generations (flow_id, generation) ON DELETE RESTRICT
);

CREATE TABLE IF NOT EXISTS event_log (
    seq        BIGSERIAL PRIMARY KEY,
    flow_id    UUID NOT NULL REFERENCES flows (flow_id) ON DELETE RESTRICT,
    ts         TIMESTAMPTZ NOT NULL DEFAULT now(),
    event_type TEXT NOT NULL
               CHECK (event_type = lower(event_type))
               CHECK (event_type IN (
                   'flow_initialized', 'step_started', 'step_finished', 'step_failed',
                   'step_signal', 'property_preference_assigned', 'flow_completed',
                   'flow_failed', 'flow_cancelled', 'step_skipped', 'step_attempt_failed',
                   'timer_started', 'timer_fired', 'signal_received', 'compensation_started',
                   'compensation_finished', 'compensation_failed', 'task_scheduled')),
    payload    JSONB NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    -- Gapless position in the flow's log; unique per flow and generation.
    version    BIGINT NOT NULL CHECK (version > 0),
    command_id TEXT NOT NULL,
    -- The writing transaction: the global feed reads in (tx_id, seq) order and only below the
    -- oldest running transaction, so a row that commits late is never skipped.
    tx_id      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT event_log_flow_generation_version_key UNIQUE (flow_id, generation, version)
);

-- The seeds' per-flow index, and the global feed's (tx_id, seq) order.
CREATE INDEX IF NOT EXISTS event_log_flow_seq_idx ON event_log (flow_id, seq);
CREATE INDEX IF NOT EXISTS event_log_feed_idx ON event_log (tx_id, seq);

CREATE TABLE IF NOT EXISTS workflow_step_artifacts (
    artifact_hash   TEXT PRIMARY KEY CHECK (length(artifact_hash) = 64),
    kind            TEXT NOT NULL,
    payload         JSONB NOT NULL,
    metadata        JSONB NULL,
    produced_in_seq BIGINT NOT NULL REFERENCES event_log (seq) ON DELETE RESTRICT
);

CREATE INDEX IF NOT EXISTS workflow_step_artifacts_produced_in_seq_idx
    ON workflow_step_artifacts (produced_in_seq);

-- Idempotency: one row per applied command; a repeat returns this result and writes nothing.
CREATE TABLE IF NOT EXISTS flow_commands (
    flow_id       UUID NOT NULL REFERENCES flows (flow_id) ON DELETE RESTRICT,
    command_id    TEXT NOT NULL CHECK (length(command_id) BETWEEN 1 AND 128),
    kind          TEXT NOT NULL CHECK (kind IN ('append', 'prune')),
    first_version BIGINT NOT NULL,
    last_version  BIGINT NOT NULL,
    seqs          BIGINT[] NOT NULL,
    applied_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, command_id)
);

CREATE TABLE IF NOT EXISTS snapshots (
    flow_id    UUID NOT NULL REFERENCES flows (flow_id) ON DELETE RESTRICT,
    generation BIGINT NOT NULL,
    version    BIGINT NOT NULL CHECK (version >= 0),
    state      JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, generation, version)
);
