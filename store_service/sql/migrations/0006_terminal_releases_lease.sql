-- 0006: two store calls fewer per flow (decision 0019).
--
-- 1. An append that ends a flow (status completed, failed or cancelled) also releases its
--    lease, in the same transaction: the engine that completes a flow no longer pays a
--    ReleaseLease call and commit for it, and an ended flow never shows a live lease.
-- 2. flowledger_create_flow: a flow created, leased and given its first append at once.
--
-- flowledger_append_batch of 0004 with that one change in its flows UPDATE; arguments, outcomes
-- and checks are unchanged (documented in 0003 and 0004). CREATE OR REPLACE keeps the grants
-- of 0005 and makes the file idempotent.

CREATE OR REPLACE FUNCTION flowledger_append_batch(
    c_namespace TEXT[],     -- per command
    c_flow      UUID[],
    c_expected  BIGINT[],
    c_command   TEXT[],
    c_status    TEXT[],     -- NULL: the flow's status is left as it is
    c_wake      TIMESTAMPTZ[], -- with c_status: the flow's new wake_at (NULL clears it)
    c_queue     TEXT[],     -- with c_status: the flow's new task_queue (NULL clears it)
    c_token     BIGINT[],   -- 0: no fencing
    c_events    INTEGER[],  -- how many events the command appends
    e_command   INTEGER[],  -- per event: its command (1-based)
    e_offset    INTEGER[],  -- its position within the command (0-based)
    e_type      TEXT[],
    e_payload   TEXT[],
    a_command   INTEGER[],  -- per artifact: its command (1-based)
    a_event     INTEGER[],  -- the event that produced it, within the command (0-based)
    a_hash      TEXT[],
    a_kind      TEXT[],
    a_payload   TEXT[],
    a_metadata  TEXT[]
) RETURNS TABLE (
    outcome            TEXT,
    first_version      BIGINT,
    last_version       BIGINT,
    seqs               BIGINT[],
    current_version    BIGINT,
    used_by            TEXT,
    artifacts_inserted BIGINT
)
LANGUAGE plpgsql VOLATILE
-- The statements' plans depend only on the array sizes, which matter little: without this the
-- plan cache re-plans some of them on every call (custom plans), a third of the call's cost.
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    n          INTEGER := coalesce(cardinality(c_flow), 0);
    f_id       UUID[];
    f_ns       TEXT[];
    f_deleted  BOOLEAN[];
    f_version  BIGINT[];
    f_gen      BIGINT[];
    f_token    BIGINT[];
    f_live     BOOLEAN[];
    f_status   TEXT[];
    f_wake     TIMESTAMPTZ[];
    f_queue    TEXT[];
    f_touched  BOOLEAN[];
    k_key      TEXT[];
    k_kind     TEXT[];
    -- Per-command results, sized up front: assigning element i of an empty array would make
    -- an array whose subscripts start at i, and unnest() would then misalign the columns.
    o_outcome  TEXT[] := array_fill(NULL::TEXT, ARRAY[n]);
    o_first    BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
    o_last     BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
    o_gen      BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
    o_current  BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
    o_used_by  TEXT[] := array_fill(NULL::TEXT, ARRAY[n]);
    done_keys  TEXT[] := '{}';
    accepted   BOOLEAN := false;
    i          INTEGER;
    j          INTEGER;
    k          INTEGER;
    cmd_key    TEXT;
BEGIN
    -- Lock the batch's flows in flow-id order: one global lock order, so concurrent batches
    -- cannot deadlock. A row updated while we waited is read in its committed state.
    SELECT array_agg(l.flow_id ORDER BY l.flow_id), array_agg(l.namespace ORDER BY l.flow_id),
           array_agg(l.deleted ORDER BY l.flow_id), array_agg(l.version ORDER BY l.flow_id),
           array_agg(l.generation ORDER BY l.flow_id), array_agg(l.lease_token ORDER BY l.flow_id),
           array_agg(l.live ORDER BY l.flow_id)
      INTO f_id, f_ns, f_deleted, f_version, f_gen, f_token, f_live
      FROM (SELECT fl.flow_id, fl.namespace, fl.deleted_at IS NOT NULL AS deleted, fl.version,
                   fl.generation, fl.lease_token,
                   coalesce(fl.lease_expires_at > now(), false) AS live
              FROM flows fl WHERE fl.flow_id = ANY (c_flow)
             ORDER BY fl.flow_id FOR UPDATE) l;
    f_status := array_fill(NULL::TEXT, ARRAY[coalesce(cardinality(f_id), 0)]);
    f_wake := array_fill(NULL::TIMESTAMPTZ, ARRAY[coalesce(cardinality(f_id), 0)]);
    f_queue := array_fill(NULL::TEXT, ARRAY[coalesce(cardinality(f_id), 0)]);
    f_touched := array_fill(false, ARRAY[coalesce(cardinality(f_id), 0)]);

    -- A statement of its own, after the lock: under READ COMMITTED it sees every command
    -- committed by a writer we waited for. Keys are flow id (fixed length) || command id. The
    -- lookups are scalar subqueries so that they stay primary-key probes whatever the planner
    -- thinks of the table's size (the plans are generic: the arrays' sizes are unknown).
    SELECT array_agg(q.cmd_key), array_agg(q.kind)
      INTO k_key, k_kind
      FROM (SELECT c_flow[s.i]::TEXT || c_command[s.i] AS cmd_key,
                   (SELECT fc.kind FROM flow_commands fc
                     WHERE fc.flow_id = c_flow[s.i] AND fc.command_id = c_command[s.i]) AS kind
              FROM generate_subscripts(c_flow, 1) AS s(i)) q
     WHERE q.kind IS NOT NULL;

    FOR i IN 1 .. n LOOP
        j := array_position(f_id, c_flow[i]);
        cmd_key := c_flow[i]::TEXT || c_command[i];
        k := array_position(k_key, cmd_key);
        IF j IS NULL OR f_ns[j] <> c_namespace[i] THEN
            o_outcome[i] := 'not_found';
        -- A repeat answers the first result even if the flow moved on (or was deleted) since.
        ELSIF k IS NOT NULL THEN
            IF k_kind[k] = 'append' THEN
                o_outcome[i] := 'duplicate';
            ELSE
                o_outcome[i] := 'reused';
                o_used_by[i] := k_kind[k];
            END IF;
        ELSIF cmd_key = ANY (done_keys) THEN
            o_outcome[i] := 'same';
        ELSIF f_deleted[j] THEN
            o_outcome[i] := 'deleted';
        ELSIF c_token[i] <> 0 AND (c_token[i] <> f_token[j] OR NOT f_live[j]) THEN
            o_outcome[i] := 'lease_lost';
        ELSIF c_expected[i] <> f_version[j] THEN
            o_outcome[i] := 'conflict';
            o_current[i] := f_version[j];
        ELSE
            o_outcome[i] := 'accepted';
            o_first[i] := f_version[j] + 1;
            f_version[j] := f_version[j] + c_events[i];
            o_last[i] := f_version[j];
            o_gen[i] := f_gen[j];
            f_touched[j] := true;
            -- Setting the status replaces wake_at and task_queue too (the last such command
            -- of the batch wins); a command without a status leaves all three as they are.
            IF c_status[i] IS NOT NULL THEN
                f_status[j] := c_status[i];
                f_wake[j] := c_wake[i];
                f_queue[j] := c_queue[i];
            END IF;
            done_keys := done_keys || cmd_key;
            accepted := true;
        END IF;
    END LOOP;

    IF NOT accepted THEN
        RETURN QUERY
        SELECT o.outcome, fc.first_version, fc.last_version, fc.seqs, o.cur, o.used_by, 0::BIGINT
          FROM unnest(o_outcome, o_current, o_used_by, c_flow, c_command)
               WITH ORDINALITY AS o(outcome, cur, used_by, f, id, ord)
          LEFT JOIN LATERAL (
                SELECT c.first_version, c.last_version, c.seqs FROM flow_commands c
                 WHERE o.outcome = 'duplicate' AND c.flow_id = o.f AND c.command_id = o.id
                 LIMIT 1) fc ON true
         ORDER BY o.ord;
        RETURN;
    END IF;

    -- Artifacts are inserted in hash order, so two batches offering the same new hashes wait
    -- for each other in one order instead of deadlocking; the first command offering a hash
    -- produced it. Data-modifying CTEs all run to completion, read or not.
    RETURN QUERY
    WITH ev AS (
        INSERT INTO event_log (flow_id, generation, version, event_type, payload, command_id)
        SELECT c_flow[x.c], o_gen[x.c], o_first[x.c] + x.off, x.t, x.p::JSONB, c_command[x.c]
          FROM unnest(e_command, e_offset, e_type, e_payload) WITH ORDINALITY AS x(c, off, t, p, ord)
         WHERE o_outcome[x.c] = 'accepted'
         ORDER BY x.ord
        RETURNING event_log.seq, event_log.flow_id, event_log.version
    ), art AS (
        INSERT INTO workflow_step_artifacts (artifact_hash, kind, payload, metadata, produced_in_seq)
        SELECT DISTINCT ON (a.h) a.h, a.k, a.p::JSONB, a.m::JSONB, ev.seq
          FROM unnest(a_command, a_event, a_hash, a_kind, a_payload, a_metadata)
               AS a(c, e, h, k, p, m)
          JOIN ev ON ev.flow_id = c_flow[a.c] AND ev.version = o_first[a.c] + a.e
         WHERE o_outcome[a.c] = 'accepted'
         ORDER BY a.h, a.c
        ON CONFLICT (artifact_hash) DO NOTHING
        RETURNING 1
    ), cmd AS (
        INSERT INTO flow_commands (flow_id, command_id, kind, first_version, last_version, seqs)
        SELECT c_flow[s.i], c_command[s.i], 'append', o_first[s.i], o_last[s.i],
               ARRAY(SELECT ev.seq FROM ev
                      WHERE ev.flow_id = c_flow[s.i]
                        AND ev.version BETWEEN o_first[s.i] AND o_last[s.i]
                      ORDER BY ev.version)
          FROM generate_subscripts(c_flow, 1) AS s(i)
         WHERE o_outcome[s.i] = 'accepted'
        RETURNING flow_commands.flow_id, flow_commands.command_id, flow_commands.first_version,
                  flow_commands.last_version, flow_commands.seqs
    ), upd AS (
        -- "= ANY" lets the flows be found through their primary key, whatever the estimates.
        -- f_status is set exactly for the flows whose status a command of the batch set.
        -- A terminal status also ends the lease (the token stays, as a release leaves it).
        UPDATE flows SET version = u.v, status = coalesce(u.s, flows.status),
                         wake_at = CASE WHEN u.s IS NULL THEN flows.wake_at ELSE u.w END,
                         task_queue = CASE WHEN u.s IS NULL THEN flows.task_queue ELSE u.q END,
                         lease_owner = CASE WHEN u.s IN ('completed', 'failed', 'cancelled')
                                            THEN NULL ELSE flows.lease_owner END,
                         lease_expires_at = CASE WHEN u.s IN ('completed', 'failed', 'cancelled')
                                                 THEN NULL ELSE flows.lease_expires_at END,
                         updated_at = now()
          FROM unnest(f_id, f_version, f_status, f_wake, f_queue, f_touched)
               AS u(f, v, s, w, q, t)
         WHERE u.t AND flows.flow_id = u.f AND flows.flow_id = ANY (f_id)
        RETURNING 1
    )
    SELECT o.outcome, coalesce(cmd.first_version, fc.first_version),
           coalesce(cmd.last_version, fc.last_version), coalesce(cmd.seqs, fc.seqs),
           o.cur, o.used_by, (SELECT count(*) FROM art)
      FROM unnest(o_outcome, o_current, o_used_by, c_flow, c_command)
           WITH ORDINALITY AS o(outcome, cur, used_by, f, id, ord)
      LEFT JOIN cmd ON o.outcome IN ('accepted', 'same') AND cmd.flow_id = o.f
                   AND cmd.command_id = o.id
      LEFT JOIN LATERAL (
            SELECT c.first_version, c.last_version, c.seqs FROM flow_commands c
             WHERE o.outcome = 'duplicate' AND c.flow_id = o.f AND c.command_id = o.id
             LIMIT 1) fc ON true
     ORDER BY o.ord;

    -- Wakes the feed's listeners at commit.
    PERFORM pg_notify('flowledger_events', '');
END
$fn$;

-- A flow created, leased and given its first append in one statement (CreateFlow with
-- lease_owner and/or initial_append): one round trip and one commit on an autocommit
-- connection, where the same in a transaction of separate statements took six round trips.
-- p_lease_owner NULL: no lease. The initial append comes as the one-command arrays of
-- flowledger_append_batch (c_command empty: none); its fencing token is the new lease's.
-- A flow that already exists is left untouched and answered with created = false (the caller
-- then compares it with what it asked for). The flow columns are the store's FLOW_COLUMNS
-- (store_service/adapters/postgres/rows.py), then the lease's, then the append's outcome row.
CREATE OR REPLACE FUNCTION flowledger_create_flow(
    p_id UUID, p_namespace TEXT, p_name TEXT, p_status TEXT, p_metadata TEXT, p_created_by TEXT,
    p_lease_owner TEXT, p_lease_ms BIGINT,
    c_namespace TEXT[], c_flow UUID[], c_expected BIGINT[], c_command TEXT[], c_status TEXT[],
    c_wake TIMESTAMPTZ[], c_queue TEXT[], c_token BIGINT[], c_events INTEGER[],
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
            ARRAY[v_token], c_events, e_command, e_offset, e_type, e_payload,
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

-- Only the store may call it (as 0005 does for the append function).
REVOKE EXECUTE ON FUNCTION flowledger_create_flow(
    UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, TEXT[], UUID[], BIGINT[], TEXT[], TEXT[],
    TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[], INTEGER[], INTEGER[], TEXT[], TEXT[], INTEGER[],
    INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flowledger_create_flow(
    UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, TEXT[], UUID[], BIGINT[], TEXT[], TEXT[],
    TIMESTAMPTZ[], TEXT[], BIGINT[], INTEGER[], INTEGER[], INTEGER[], TEXT[], TEXT[], INTEGER[],
    INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[]) TO flowledger_app;
