-- agentd schema 7: agentd_claim walks the queue in submission order instead of planning one big query.
--
-- Builds on schema 6's agentd_claim (same signature, so CREATE OR REPLACE): p_exclude (`AND j.id <> ALL
-- (p_exclude)` there, `c.id = ANY (p_exclude)` skipped here) and schema 3's per-project max_running
-- (agentd_project_has_room) are kept.
--
-- Schemas 1-6's claim was one statement whose plan depended on the table's statistics. Right after a burst of
-- submissions (before autovacuum's ANALYZE) the planner believed the queue was empty and chose an
-- anti-join that compares every queued job with every other: 16 ms for ONE claim with 500 queued jobs,
-- quadratic in the queue's length (bench/bench_worker.py: 110 jobs/s against pgqueuer's thousands).
-- This version reads the queue through a cursor in `seq` order (the FOR loop's fast-start plan: an
-- index scan of agentd_jobs_queued), stops as soon as it has claimed what it wants, and checks each
-- candidate with index lookups only: ~0.2 ms per claim whatever the statistics say.
--
-- Same rules as before: a project's jobs start in submission order (the first queued job seen of a project
-- decides for the project: when it cannot start - backing off, excluded, locked by another claimer, its
-- project full - the newer ones wait too), at most one per project per claim; a project runs up to its
-- max_running (agentd_project_has_room, checked under the project's advisory lock); Limits fleet-wide under
-- one lock; p_exclude: jobs the claiming process still runs are not handed to it again.
CREATE OR REPLACE FUNCTION agentd_claim(
    p_worker_id text, p_lease_s double precision, p_max integer, p_global_max integer, p_provider_caps jsonb,
    p_exclude text[]
) RETURNS SETOF agentd_jobs LANGUAGE plpgsql AS $$
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
        -- Still queued (the cursor's snapshot may be older), not locked by another claimer, room in its project.
        UPDATE agentd_jobs j
           SET status = 'running', worker_id = p_worker_id, started_at = now(),
               attempts = attempts + 1, lease_expires_at = now() + make_interval(secs => p_lease_s)
         WHERE j.id = (SELECT q.id FROM agentd_jobs q WHERE q.id = c.id AND q.status = 'queued'
                          FOR UPDATE SKIP LOCKED)
           AND agentd_project_has_room(c.project_id)
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
