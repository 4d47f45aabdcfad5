-- flowledger_create_flow: creates a flow and, with one command, appends its first events
-- through flowledger_append_batch, in one call (store_service/adapters/postgres/flows.py).
--
-- A repeatable definition (docs/decisions/0027-repeatable-sql-functions.md): the store applies
-- this file again whenever its checksum changes. Change the body here; changing the argument
-- list or the result needs a numbered migration that drops the old signature.
-- SECURITY INVOKER, callable by the store's role only, as flowledger_append_batch.

CREATE OR REPLACE FUNCTION flowledger_create_flow(
    p_id UUID, p_namespace TEXT, p_name TEXT, p_status TEXT, p_metadata TEXT, p_created_by TEXT,
    p_lease_owner TEXT, p_lease_ms BIGINT,
    c_namespace TEXT[], c_flow UUID[], c_expected BIGINT[], c_command TEXT[], c_status TEXT[],
    c_wake TIMESTAMPTZ[], c_queue TEXT[], c_token BIGINT[], c_events INTEGER[], c_limit BIGINT[],
    e_command INTEGER[], e_offset INTEGER[], e_type TEXT[], e_payload TEXT[],
    a_command INTEGER[], a_event INTEGER[], a_hash TEXT[], a_kind TEXT[], a_payload TEXT[],
    a_metadata TEXT[]
) RETURNS TABLE (
    created BOOLEAN,
    flow_id TEXT, namespace TEXT, name TEXT, status TEXT, metadata TEXT, parent_flow_id TEXT,
    fork_version BIGINT, version BIGINT, generation BIGINT, created_by TEXT,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, deleted BOOLEAN, lease_token BIGINT,
    wake_at TIMESTAMPTZ, task_queue TEXT,
    lease_expires_at TIMESTAMPTZ, lease_owner TEXT,
    outcome TEXT, first_version BIGINT, last_version BIGINT, seqs BIGINT[],
    current_version BIGINT, used_by TEXT, artifacts_inserted BIGINT
)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off  -- every row through an index (0007)
AS $fn$
#variable_conflict use_column
DECLARE
    v_token   BIGINT := 0;
    o_outcome TEXT;
    o_first   BIGINT;
    o_last    BIGINT;
    o_seqs    BIGINT[];
    o_current BIGINT;
    o_used_by TEXT;
    o_arts    BIGINT;
BEGIN
    IF p_lease_owner IS NOT NULL THEN
        v_token := nextval('flow_lease_tokens');
    END IF;
    INSERT INTO flows AS f (flow_id, namespace, name, status, metadata, created_by, version,
                            lease_owner, lease_token, lease_expires_at)
    VALUES (p_id, p_namespace, p_name, p_status, p_metadata::JSONB, p_created_by, 0,
            p_lease_owner, v_token,
            CASE WHEN p_lease_owner IS NULL THEN NULL
                 ELSE now() + p_lease_ms * interval '1 millisecond' END)
    ON CONFLICT (flow_id) DO NOTHING;
    IF NOT FOUND THEN
        -- Someone made it first (or a repeat): nothing of this call is applied.
        RETURN QUERY SELECT false, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT,
            NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TIMESTAMPTZ,
            NULL::TIMESTAMPTZ, NULL::BOOLEAN, NULL::BIGINT, NULL::TIMESTAMPTZ, NULL::TEXT,
            NULL::TIMESTAMPTZ, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT,
            NULL::BIGINT[], NULL::BIGINT, NULL::TEXT, NULL::BIGINT;
        RETURN;
    END IF;
    INSERT INTO flow_generations (flow_id, generation, base_version, created_by, reason)
    VALUES (p_id, 0, 0, p_created_by, 'created');
    IF cardinality(c_command) = 1 THEN
        SELECT a.outcome, a.first_version, a.last_version, a.seqs, a.current_version, a.used_by,
               a.artifacts_inserted
          INTO o_outcome, o_first, o_last, o_seqs, o_current, o_used_by, o_arts
          FROM flowledger_append_batch(
            c_namespace, c_flow, c_expected, c_command, c_status, c_wake, c_queue,
            ARRAY[v_token], c_events, c_limit, e_command, e_offset, e_type, e_payload,
            a_command, a_event, a_hash, a_kind, a_payload, a_metadata) a;
        IF o_outcome <> 'accepted' THEN
            -- Cannot happen to a flow made just now; refuse the whole call rather than half.
            RAISE EXCEPTION 'initial append of new flow % was not accepted: %', p_id, o_outcome;
        END IF;
    END IF;
    RETURN QUERY
    SELECT true, f.flow_id::text, f.namespace, f.name, f.status, f.metadata::text,
           f.parent_flow_id::text, f.fork_version, f.version, f.generation, f.created_by,
           f.created_at, f.updated_at, f.deleted_at IS NOT NULL, f.lease_token, f.wake_at,
           f.task_queue, f.lease_expires_at, f.lease_owner,
           o_outcome, o_first, o_last, o_seqs, o_current, o_used_by, o_arts
      FROM flows f WHERE f.flow_id = p_id;
END
$fn$;

-- Functions are executable by PUBLIC when created; this one only by the store.
REVOKE EXECUTE ON FUNCTION flowledger_create_flow(
    UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, TEXT[], UUID[], BIGINT[], TEXT[], TEXT[],
    TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[], BIGINT[], INTEGER[], INTEGER[], TEXT[], TEXT[],
    INTEGER[], INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flowledger_create_flow(
    UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, TEXT[], UUID[], BIGINT[], TEXT[], TEXT[],
    TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[], BIGINT[], INTEGER[], INTEGER[], TEXT[], TEXT[],
    INTEGER[], INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[]) TO flowledger_app;
