-- agentd schema 9: agentd_claim without a sort of the whole queue and without planning a query per job; a
-- run's last events written with its result.
--
-- Same function as schema 7's (same signature, so CREATE OR REPLACE), same rules, two changes in how it runs.
-- Measured with auto_explain on a queue of 1,000 jobs, claiming 4 (the worker's claim of bench/bench_worker.py):
-- - the walk's query was planned as a bitmap scan of agentd_jobs_queued_project and a sort of EVERY queued job
--   (0.5 ms a claim, growing with the queue), not as the walk of agentd_jobs_queued in `seq` order that stops
--   after a few rows: right after a burst of submissions the statistics say the queue is nearly empty, and a
--   sort of "10 rows" looks free. Sorts and bitmap scans are off inside the function (SET clauses below):
--   every query in it reads a handful of rows through an index, in the order the index gives;
-- - agentd_project_has_room (a SQL function in the UPDATE's filter) was planned again at every call, 0.2 ms of
--   each claimed job's 0.24 ms. Its two lookups are now statements of the function itself (plans cached for
--   the session), run after the project's advisory lock as before: under it no other claimer starts a job of
--   the project, so counting first and then updating is as race-free as counting in the UPDATE.
CREATE OR REPLACE FUNCTION agentd_claim(
    p_worker_id text, p_lease_s double precision, p_max integer, p_global_max integer, p_provider_caps jsonb,
    p_exclude text[]
) RETURNS SETOF agentd_jobs LANGUAGE plpgsql
ROWS 10  -- a claim hands out a few jobs (the default guess, 1,000, makes the callers' joins hash whole tables)
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
DECLARE
    v_want integer := p_max;
    v_room jsonb := '{}';  -- free slots per capped provider
    v_seen text[] := '{}';  -- projects whose first queued job was looked at
    c record;
    v_job agentd_jobs;
BEGIN
    IF p_global_max IS NOT NULL OR p_provider_caps IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(1634168438, 0);
        IF p_global_max IS NOT NULL THEN
            v_want := least(v_want, p_global_max - (SELECT count(*) FROM agentd_jobs WHERE status = 'running'));
        END IF;
        SELECT coalesce(jsonb_object_agg(cap.key, cap.value::integer - (
                   SELECT count(*) FROM agentd_jobs r WHERE r.status = 'running' AND r.provider = cap.key)), '{}')
          INTO v_room
          FROM jsonb_each_text(coalesce(p_provider_caps, '{}')) AS cap;
    END IF;
    IF v_want <= 0 THEN
        RETURN;
    END IF;
    FOR c IN SELECT j.id, j.project_id, j.provider, j.run_after FROM agentd_jobs j
              WHERE j.status = 'queued' ORDER BY j.seq LOOP
        CONTINUE WHEN c.project_id = ANY (v_seen);
        v_seen := v_seen || c.project_id;
        CONTINUE WHEN c.run_after > now() OR c.id = ANY (p_exclude);
        CONTINUE WHEN coalesce((v_room ->> c.provider)::integer, 1) <= 0;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(1634168436, hashtext(c.project_id));
        -- Room in its project (agentd_project_has_room, inlined): fewer running than its max_running.
        CONTINUE WHEN (SELECT count(*) FROM agentd_jobs r WHERE r.project_id = c.project_id AND r.status = 'running')
                      >= coalesce((SELECT p.max_running FROM agentd_projects p WHERE p.id = c.project_id), 1);
        -- Still queued (the cursor's snapshot may be older), not locked by another claimer.
        UPDATE agentd_jobs j
           SET status = 'running', worker_id = p_worker_id, started_at = now(),
               attempts = attempts + 1, lease_expires_at = now() + make_interval(secs => p_lease_s)
         WHERE j.id = (SELECT q.id FROM agentd_jobs q WHERE q.id = c.id AND q.status = 'queued'
                          FOR UPDATE SKIP LOCKED)
        RETURNING j.* INTO v_job;
        CONTINUE WHEN NOT FOUND;
        RETURN NEXT v_job;
        v_want := v_want - 1;
        IF v_room ? c.provider THEN
            v_room := jsonb_set(v_room, ARRAY[c.provider], to_jsonb((v_room ->> c.provider)::integer - 1));
        END IF;
        EXIT WHEN v_want <= 0;
    END LOOP;
END
$$;

-- The end of a run in the statement that stores its result (the run journal's `finish_ended`): the events the
-- run produced that were not written yet (`p_events`, a JSON array of [type, data], in order), then `done`
-- (`p_done`), and the stream closed. Same rules as agentd_append_fenced (schema 8): under the stream's advisory
-- lock, numbered from the table, refused as a whole (NULL) when the stream is unknown or closed or a later run
-- has written; the stream's run moves up. Returns the number of `done`.
CREATE FUNCTION agentd_append_run_end(p_stream_id text, p_run integer, p_events jsonb, p_done jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_run integer;
    v_seq integer;
    v_n integer := coalesce(jsonb_array_length(p_events), 0);
BEGIN
    PERFORM pg_advisory_xact_lock(1634168440, hashtext(p_stream_id));
    SELECT run INTO v_run FROM agentd_streams
     WHERE stream_id = p_stream_id AND closed_at IS NULL FOR UPDATE;
    IF NOT FOUND OR v_run > p_run THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(seq), 0) INTO v_seq FROM agentd_events WHERE stream_id = p_stream_id;
    IF v_n > 0 THEN
        INSERT INTO agentd_events (stream_id, seq, type, data, run)
        SELECT p_stream_id, v_seq + e.ord::integer, e.value ->> 0, e.value -> 1, p_run
          FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(value, ord);
    END IF;
    v_seq := v_seq + v_n + 1;
    INSERT INTO agentd_events (stream_id, seq, type, data, run) VALUES (p_stream_id, v_seq, 'done', p_done, p_run);
    UPDATE agentd_streams SET run = greatest(run, p_run), closed_at = now() WHERE stream_id = p_stream_id;
    RETURN v_seq;
END
$$;
