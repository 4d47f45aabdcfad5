-- 0005: flowledger_app, the role the store serves with (docs/security.md, "Database roles").
--
-- Migrations run as the tables' owner; the store needs much less. It reads everything, adds
-- rows, and changes only the columns the design says change: a flow's head, status, wait,
-- lease and deletion mark, a definition version's state. It never deletes a row, and the
-- history (event_log, artifacts, command rows, generations, snapshots, definition transitions)
-- is insert-only for it. Later migrations grant what their new objects need next to them;
-- tests/security/test_db_role.py holds the whole list and fails on anything not in it.
--
-- A NOLOGIN group role: log in as a member (CREATE ROLE flowledger_store LOGIN PASSWORD '...'
-- IN ROLE flowledger_app) or make it a login role itself. Roles belong to the whole cluster:
-- creating it needs CREATEROLE, so a migrating role without it finds it created beforehand.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'flowledger_app') THEN
        BEGIN
            CREATE ROLE flowledger_app NOLOGIN;
        EXCEPTION
            -- Created meanwhile by the migration of another database of the cluster.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role flowledger_app does not exist and % may not create it',
                    current_user
                    USING HINT = 'create it once as a role with CREATEROLE: '
                                 'CREATE ROLE flowledger_app NOLOGIN';
        END;
    END IF;
    -- The schema the tables were created in (the migrating role's search_path).
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO flowledger_app', current_schema());
END
$$;

-- Start-up checks that every migration is applied (it may not apply them itself).
GRANT SELECT ON schema_migrations TO flowledger_app;

-- Insert-only history.
GRANT SELECT, INSERT ON event_log, workflow_step_artifacts, flow_commands, flow_generations,
    snapshots, definition_transitions TO flowledger_app;
GRANT USAGE ON SEQUENCE event_log_seq_seq TO flowledger_app;

-- Flows: created, then only their head, status, wait, lease and deletion mark change; never
-- their id, namespace, name, metadata, parentage or creator. (SELECT ... FOR UPDATE/FOR SHARE
-- needs UPDATE on some column too.)
GRANT SELECT, INSERT ON flows TO flowledger_app;
GRANT UPDATE (status, version, generation, updated_at, wake_at, task_queue, lease_owner,
    lease_token, lease_expires_at, deleted_at, deleted_by, delete_reason) ON flows
    TO flowledger_app;
GRANT USAGE ON SEQUENCE flow_lease_tokens TO flowledger_app;

-- Definitions: a version's state moves (draft -> published -> archived); nothing else changes.
GRANT SELECT, INSERT ON definitions, definition_versions TO flowledger_app;
GRANT UPDATE (state, published_at) ON definition_versions TO flowledger_app;
-- No statement updates a definitions row, but putting a version locks it (SELECT ... FOR
-- UPDATE), which Postgres allows only with UPDATE on some column: the most harmless one.
GRANT UPDATE (created_at) ON definitions TO flowledger_app;

-- The group-commit append (SECURITY INVOKER: it writes with the caller's privileges above).
-- Functions are executable by PUBLIC by default; this one only by the store.
REVOKE EXECUTE ON FUNCTION flowledger_append_batch(
    TEXT[], UUID[], BIGINT[], TEXT[], TEXT[], TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[],
    INTEGER[], INTEGER[], TEXT[], TEXT[], INTEGER[], INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flowledger_append_batch(
    TEXT[], UUID[], BIGINT[], TEXT[], TEXT[], TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[],
    INTEGER[], INTEGER[], TEXT[], TEXT[], INTEGER[], INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[])
    TO flowledger_app;
