-- 0002: versioned definitions (draft -> published -> archived, with a history) and work leases.
-- Every statement is idempotent (IF NOT EXISTS) and the runner applies the file in one transaction.

-- One row per definition: it is locked to number the next version (max + 1, without gaps).
CREATE TABLE IF NOT EXISTS definitions (
    namespace  TEXT NOT NULL CHECK (length(namespace) BETWEEN 1 AND 128),
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    created_by TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

CREATE TABLE IF NOT EXISTS definition_versions (
    namespace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    version         BIGINT NOT NULL CHECK (version > 0),
    state           TEXT NOT NULL CHECK (state IN ('draft', 'published', 'archived')),
    -- The validated document (the store hands it back in RFC 8785 canonical form).
    definition      JSONB NOT NULL,
    -- sha256 over the ordered step ids (computed by the engine).
    definition_hash TEXT NOT NULL CHECK (length(definition_hash) = 64),
    change_note     TEXT NOT NULL DEFAULT '',
    created_by      TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Last time the version became published; the latest published version has the greatest.
    published_at    TIMESTAMPTZ NULL,
    -- Idempotency of PutDefinitionVersion; NULLs are distinct, so calls without one never clash.
    request_id      TEXT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    PRIMARY KEY (namespace, name, version),
    CONSTRAINT definition_versions_definition_fkey
        FOREIGN KEY (namespace, name) REFERENCES definitions (namespace, name) ON DELETE RESTRICT,
    CONSTRAINT definition_versions_request_key UNIQUE (namespace, name, request_id)
);

-- The history of a version: its creation as a draft (position 1), then every transition.
CREATE TABLE IF NOT EXISTS definition_transitions (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    position    INTEGER NOT NULL CHECK (position > 0),
    state       TEXT NOT NULL CHECK (state IN ('draft', 'published', 'archived')),
    change_note TEXT NOT NULL DEFAULT '',
    actor       TEXT NOT NULL DEFAULT '',
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name, version, position),
    CONSTRAINT definition_transitions_version_fkey
        FOREIGN KEY (namespace, name, version)
        REFERENCES definition_versions (namespace, name, version) ON DELETE RESTRICT
);

-- Fencing tokens of work leases: one global increasing sequence, so a takeover of a flow always
-- gets a larger token than any earlier lease of it (flows.lease_token keeps the last one).
CREATE SEQUENCE IF NOT EXISTS flow_lease_tokens AS BIGINT START WITH 1 MINVALUE 1;

-- The claim query: runnable flows in updated_at order (its lease test is applied to these rows).
CREATE INDEX IF NOT EXISTS flows_claimable_idx ON flows (updated_at, flow_id)
    WHERE status IN ('queued', 'running') AND deleted_at IS NULL;
