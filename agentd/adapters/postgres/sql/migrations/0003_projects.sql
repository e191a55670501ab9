-- agentd schema 3: projects (agentd.adapters.postgres.postgres_project_store) and the patches of their jobs.
-- The claim now lets a project run up to its `max_running` jobs at once (1 for a project that was never
-- created, as before): agentd_claim is the one of 0001 with its two "project runs nothing" checks replaced
-- by agentd_project_has_room(project_id).

CREATE TABLE agentd_projects (
    id          text PRIMARY KEY,
    spec        jsonb NOT NULL,      -- git source, template, variables, description (domain ProjectSpec)
    max_running integer NOT NULL DEFAULT 1 CHECK (max_running >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agentd_job_patches (
    job_id     text PRIMARY KEY,
    project_id text NOT NULL,
    patch      bytea NOT NULL,       -- `git diff --binary` against the commit the job started from
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A project may now run several jobs: the unique index of 0001 becomes a plain one (recover and the limits
-- still scan running jobs through it). The claim keeps the limit race-free as before: it takes the
-- project's advisory lock before it starts a job of that project, and counts again under it.
DROP INDEX agentd_jobs_one_running_per_project;
CREATE INDEX agentd_jobs_running_per_project ON agentd_jobs (project_id) WHERE status = 'running';

-- Whether a project may start one more job: fewer running than its max_running (1 when not created).
CREATE FUNCTION agentd_project_has_room(p_project_id text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM agentd_jobs r WHERE r.project_id = p_project_id AND r.status = 'running')
         < coalesce((SELECT p.max_running FROM agentd_projects p WHERE p.id = p_project_id), 1)
$$;

CREATE OR REPLACE FUNCTION agentd_claim(
    p_worker_id text, p_lease_s double precision, p_max integer, p_global_max integer, p_provider_caps jsonb
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
