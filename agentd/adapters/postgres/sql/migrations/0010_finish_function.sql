-- agentd schema 10: the statement that stores results (queries.sql `finish`) as a function whose plan is made
-- once per session, not at every call.
--
-- Measured with pg_stat_statements on bench/bench_worker.py (2,000 jobs, one worker): the statement was planned
-- at every one of its ~500 calls, 0.28 ms each, more than it took to run (0.24 ms). As a prepared statement its
-- `%(worker_id)s IS NULL OR …` and `%(wake_any)s` branches fold away in a custom plan, so PostgreSQL judged
-- the generic plan dearer and planned again each time. Here the same statement runs inside a function with
-- plan_cache_mode = force_generic_plan: its plan is cached for the session, and it is a plan of index lookups
-- by primary key whatever the arguments are (the input is a handful of results).
--
-- Same rules as before, word for word (see queries.sql `finish`): the retry decision reads the row being
-- updated; a final job never changes again; only `p_worker_id`'s running job of the attempt given is touched;
-- `done` (the run journal) is appended with the run's remaining events and the stream closed
-- (agentd_append_run_end, schema 9) for each job this call stored final; idle workers are woken when a queued
-- job may now run. Rows: the job as it is now (`job`), with the number of its `done` event or NULL.
CREATE FUNCTION agentd_finish(
    p_input jsonb, p_ids text[], p_worker_id text, p_retry_base_s double precision,
    p_retry_max_s double precision, p_wake_any boolean
) RETURNS TABLE (job agentd_jobs, done_seq integer) LANGUAGE plpgsql
ROWS 10
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM jsonb_to_recordset(p_input)
            AS u(id text, status text, result jsonb, retryable boolean, error text, attempt integer,
                  done jsonb, events jsonb)
    ), upd AS (
        UPDATE agentd_jobs j SET
            (status, finished_at, result, last_error, run_after, worker_id, lease_expires_at) = (
                SELECT CASE WHEN x.retry THEN 'queued' ELSE u.status END,
                       CASE WHEN x.retry THEN NULL ELSE now() END,
                       CASE WHEN x.retry THEN NULL ELSE u.result END,
                       CASE WHEN x.retry THEN u.error ELSE j.last_error END,
                       CASE WHEN x.retry
                            THEN now() + make_interval(secs => least(
                                p_retry_base_s * power(2, greatest(j.attempts, 1) - 1), p_retry_max_s))
                            ELSE j.run_after END,
                       CASE WHEN x.retry THEN NULL ELSE j.worker_id END,
                       NULL::timestamptz
                  FROM (SELECT u.retryable AND NOT j.cancel_requested AND j.attempts < j.max_attempts AS retry)
                       AS x)
        FROM input u
        WHERE j.id = ANY (p_ids) AND j.id = u.id AND j.status IN ('queued', 'running')
          AND (p_worker_id IS NULL OR (j.worker_id = p_worker_id AND j.status = 'running'))
          AND (u.attempt IS NULL OR (j.attempts = u.attempt AND j.status = 'running'))
        RETURNING j AS jrow, j.id, j.stream_id, j.project_id, j.attempts, j.status
    ), wake AS (
        SELECT pg_notify('agentd_jobs', 'finished')
         WHERE EXISTS (SELECT 1 FROM upd)
           AND CASE WHEN p_wake_any
                    THEN EXISTS (SELECT 1 FROM agentd_jobs WHERE status = 'queued')
                    ELSE EXISTS (SELECT 1 FROM upd JOIN agentd_jobs q
                                   ON q.project_id = upd.project_id AND q.status = 'queued')
               END
    ), ended AS (
        SELECT upd.id, agentd_append_run_end(upd.stream_id, upd.attempts, u.events, u.done) AS seq
          FROM upd JOIN input u ON u.id = upd.id
         WHERE upd.status NOT IN ('queued', 'running') AND u.done IS NOT NULL
    )
    SELECT upd.jrow, ended.seq FROM upd LEFT JOIN ended ON ended.id = upd.id
     WHERE (SELECT count(*) FROM wake) >= 0
    UNION ALL
    SELECT j, NULL::integer FROM agentd_jobs j
     WHERE j.id = ANY (p_ids) AND j.id NOT IN (SELECT id FROM upd);
END
$$;
