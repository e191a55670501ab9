-- agentd schema 6: fencing, retention, and claims that skip the claimer's own running jobs.
-- A stream keeps the newest run (job attempt) that wrote to it; writes of older runs are refused
-- (agentd.adapters.postgres.postgres_event_stream). Each event records the run that wrote it.
ALTER TABLE agentd_streams ADD COLUMN run integer NOT NULL DEFAULT 0;
ALTER TABLE agentd_events ADD COLUMN run integer NOT NULL DEFAULT 0;

-- Retention (`purge`): final jobs by the time they finished.
CREATE INDEX agentd_jobs_finished ON agentd_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- agentd_claim as in schema 3 (unchanged by 4 and 5), plus p_exclude: jobs the claiming process still runs (a lease that expired
-- under a live run) are not handed to it again; as they stay queued, their projects' newer jobs wait too.
DROP FUNCTION agentd_claim(text, double precision, integer, integer, jsonb);

CREATE FUNCTION agentd_claim(
    p_worker_id text, p_lease_s double precision, p_max integer, p_global_max integer, p_provider_caps jsonb,
    p_exclude text[]
) RETURNS SETOF agentd_jobs LANGUAGE plpgsql AS $$
DECLARE
    v_want integer := p_max;
    v_room jsonb := '{}';  -- free slots per capped provider
    v_skipped text[] := '{}';
    v_seen text[];
    v_picked text[];
    v_started agentd_jobs[];
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
    WHILE v_want > 0 LOOP
        WITH candidate AS (
            SELECT j.id, j.project_id, j.provider, j.seq FROM agentd_jobs j
             WHERE j.status = 'queued' AND j.run_after <= now()
               AND j.project_id <> ALL (v_skipped)
               AND j.id <> ALL (p_exclude)
               AND coalesce((v_room ->> j.provider)::integer, 1) > 0
               AND agentd_project_has_room(j.project_id)
               -- A project's jobs start in submission order: while an older one waits (locked by another
               -- claimer, or backing off before a retry), the newer ones wait too.
               AND NOT EXISTS (
                   SELECT 1 FROM agentd_jobs o
                    WHERE o.project_id = j.project_id AND o.status = 'queued' AND o.seq < j.seq)
             ORDER BY j.seq
             LIMIT v_want
               FOR UPDATE SKIP LOCKED
        ), first_of_project AS (
            SELECT DISTINCT ON (c.project_id) c.* FROM candidate c ORDER BY c.project_id, c.seq
        ), in_room AS (
            SELECT f.*, row_number() OVER (PARTITION BY f.provider ORDER BY f.seq) AS nth FROM first_of_project f
        )
        SELECT (SELECT array_agg(DISTINCT c.project_id) FROM candidate c),
               (SELECT array_agg(i.id) FROM in_room i
                 WHERE i.nth <= coalesce((v_room ->> i.provider)::integer, v_want)
                   AND pg_try_advisory_xact_lock(1634168436, hashtext(i.project_id)))
          INTO v_seen, v_picked;
        EXIT WHEN v_seen IS NULL;
        v_skipped := v_skipped || v_seen;
        CONTINUE WHEN v_picked IS NULL;
        WITH started AS (
            UPDATE agentd_jobs j
               SET status = 'running', worker_id = p_worker_id, started_at = now(),
                   attempts = attempts + 1, lease_expires_at = now() + make_interval(secs => p_lease_s)
             WHERE j.id = ANY (v_picked)
               AND agentd_project_has_room(j.project_id)
            RETURNING j.*
        )
        SELECT array_agg(s) INTO v_started FROM started s;
        CONTINUE WHEN v_started IS NULL;
        RETURN QUERY SELECT * FROM unnest(v_started) ORDER BY seq;
        v_want := v_want - cardinality(v_started);
        SELECT v_room || coalesce(jsonb_object_agg(t.provider, (v_room ->> t.provider)::integer - t.n), '{}')
          INTO v_room
          FROM (SELECT provider, count(*) AS n FROM unnest(v_started) GROUP BY provider) AS t
         WHERE v_room ? t.provider;
    END LOOP;
END
$$;
