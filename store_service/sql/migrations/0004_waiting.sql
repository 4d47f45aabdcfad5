-- 0004: waiting flows: timers (wake_at) and external task queues (task_queue), the
-- flow_cancel_requested event type, and the append function that sets both columns.
--
-- wake_at: while WAITING, when engines may claim the flow again (NULL: only an append moves it
-- on). task_queue: while WAITING on an external task, the queue task workers claim it from.
-- Whenever an append sets the flow's status it replaces both (NULL clears them); an append
-- without a status leaves them as they are. The runner applies the file once, in one
-- transaction (its statements are not idempotent on their own).

ALTER TABLE flows ADD COLUMN wake_at TIMESTAMPTZ NULL;
ALTER TABLE flows ADD COLUMN task_queue TEXT NULL;
-- The contract's queue names (store.proto); only a waiting flow waits on a queue.
ALTER TABLE flows ADD CONSTRAINT flows_task_queue_check
    CHECK (task_queue ~ '^[A-Za-z0-9._:-]{1,128}$');
ALTER TABLE flows ADD CONSTRAINT flows_task_queue_waiting_check
    CHECK (task_queue IS NULL OR status = 'waiting');

-- The engines' second claim query: waiting flows whose wake_at has passed, in wake_at order.
CREATE INDEX flows_wake_idx ON flows (wake_at, flow_id)
    WHERE status = 'waiting' AND deleted_at IS NULL AND wake_at IS NOT NULL;
-- The task workers' claim query: waiting flows of some queues, in updated_at order.
CREATE INDEX flows_task_queue_idx ON flows (task_queue, updated_at, flow_id)
    WHERE status = 'waiting' AND deleted_at IS NULL AND task_queue IS NOT NULL;

-- The known event types, now with flow_cancel_requested. The new constraint is added NOT VALID:
-- every existing row passed the old constraint, whose list the new one extends, so validating
-- would only scan the whole log under an exclusive lock to learn nothing. New rows are checked.
ALTER TABLE event_log DROP CONSTRAINT event_log_event_type_check1;
ALTER TABLE event_log ADD CONSTRAINT event_log_event_type_known
    CHECK (event_type IN (
        'flow_initialized', 'step_started', 'step_finished', 'step_failed',
        'step_signal', 'property_preference_assigned', 'flow_completed',
        'flow_failed', 'flow_cancelled', 'step_skipped', 'step_attempt_failed',
        'timer_started', 'timer_fired', 'signal_received', 'compensation_started',
        'compensation_finished', 'compensation_failed', 'task_scheduled',
        'flow_cancel_requested')) NOT VALID;

-- flowledger_append_batch of 0003 with two more per-command arrays (c_wake, c_queue) after
-- c_status; outcomes and checks are unchanged (documented in 0003). The old signature goes:
-- a store of this release calls only the new one.
DROP FUNCTION IF EXISTS flowledger_append_batch(
    TEXT[], UUID[], BIGINT[], TEXT[], TEXT[], BIGINT[], INTEGER[], INTEGER[], INTEGER[], TEXT[],
    TEXT[], INTEGER[], INTEGER[], TEXT[], TEXT[], TEXT[], TEXT[]);

CREATE FUNCTION flowledger_append_batch(
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
        UPDATE flows SET version = u.v, status = coalesce(u.s, flows.status),
                         wake_at = CASE WHEN u.s IS NULL THEN flows.wake_at ELSE u.w END,
                         task_queue = CASE WHEN u.s IS NULL THEN flows.task_queue ELSE u.q END,
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
