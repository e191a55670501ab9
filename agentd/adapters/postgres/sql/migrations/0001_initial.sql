-- agentd schema 1: jobs (the work queue), streams and events (the durable event log).
-- Applied by agentd.adapters.postgres.migrate inside one transaction, under an advisory lock.

CREATE TABLE agentd_jobs (
    id               text PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- FIFO order and paging
    project_id       text NOT NULL,
    provider         text NOT NULL,
    stream_id        text NOT NULL,
    request          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    run_after        timestamptz NOT NULL DEFAULT now(),
    cancel_requested boolean NOT NULL DEFAULT false,
    worker_id        text,
    lease_expires_at timestamptz,
    idempotency_key  text,
    request_hash     text,
    last_error       text,
    result           jsonb
);

-- The claim scans queued jobs in FIFO order.
CREATE INDEX agentd_jobs_queued ON agentd_jobs (seq) WHERE status = 'queued';
-- One running job per project, fleet-wide: the claim keeps it, this index makes it a fact.
CREATE UNIQUE INDEX agentd_jobs_one_running_per_project ON agentd_jobs (project_id) WHERE status = 'running';
-- recover() looks for expired leases; limits count running jobs per provider.
CREATE INDEX agentd_jobs_running_lease ON agentd_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX agentd_jobs_running_provider ON agentd_jobs (provider) WHERE status = 'running';
-- busy="reject" asks whether a project has a queued job.
CREATE INDEX agentd_jobs_queued_project ON agentd_jobs (project_id) WHERE status = 'queued';
-- list_jobs: newest first per project.
CREATE INDEX agentd_jobs_project ON agentd_jobs (project_id, seq DESC);
CREATE UNIQUE INDEX agentd_jobs_idempotency ON agentd_jobs (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Hands the oldest runnable queued jobs (up to p_max) to p_worker_id, in one statement: one round trip, one
-- commit. SKIP LOCKED lets concurrent claimers pick different rows, but two of them may pick two jobs of the
-- SAME project, each seeing no running job in its snapshot. So a claimer takes a per-project advisory lock
-- and then re-checks in a statement of its own (a statement's snapshot is taken when it starts: a check in
-- the statement that takes the lock could miss a claim committed meanwhile); a claimer that cannot get the
-- lock skips that project. Limits count running jobs, so claimers that enforce limits take one fleet-wide
-- lock for their (short) transaction: two of them never both take the last free slot.
CREATE FUNCTION agentd_claim(
    p_worker_id text, p_lease_s double precision, p_max integer, p_global_max integer, p_provider_caps jsonb
) RETURNS SETOF agentd_jobs LANGUAGE plpgsql AS $$
DECLARE
    v_limited boolean := p_global_max IS NOT NULL OR p_provider_caps IS NOT NULL;
    v_running integer := 0;
    v_by_provider jsonb := '{}';
    v_full_providers text[] := '{}';
    v_skipped_projects text[] := '{}';
    v_taken integer := 0;
    v_job agentd_jobs;
BEGIN
    IF v_limited THEN
        PERFORM pg_advisory_xact_lock(1634168438, 0);
        SELECT coalesce(sum(c.n), 0), coalesce(jsonb_object_agg(c.provider, c.n), '{}')
          INTO v_running, v_by_provider
          FROM (SELECT provider, count(*) AS n FROM agentd_jobs WHERE status = 'running' GROUP BY provider) AS c;
    END IF;
    WHILE v_taken < p_max LOOP
        IF v_limited THEN
            EXIT WHEN p_global_max IS NOT NULL AND v_running >= p_global_max;
            SELECT coalesce(array_agg(cap.key), '{}') INTO v_full_providers
              FROM jsonb_each_text(coalesce(p_provider_caps, '{}')) AS cap
             WHERE coalesce((v_by_provider ->> cap.key)::integer, 0) >= cap.value::integer;
        END IF;
        SELECT * INTO v_job FROM agentd_jobs j
         WHERE j.status = 'queued' AND j.run_after <= now()
           AND j.provider <> ALL (v_full_providers)
           AND j.project_id <> ALL (v_skipped_projects)
           AND NOT EXISTS (
               SELECT 1 FROM agentd_jobs r WHERE r.project_id = j.project_id AND r.status = 'running')
         ORDER BY j.seq
         LIMIT 1
         FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;
        IF pg_try_advisory_xact_lock(1634168436, hashtext(v_job.project_id)) THEN
            IF NOT EXISTS (
                SELECT 1 FROM agentd_jobs r WHERE r.project_id = v_job.project_id AND r.status = 'running')
            THEN
                RETURN QUERY
                UPDATE agentd_jobs
                   SET status = 'running', worker_id = p_worker_id, started_at = now(),
                       attempts = attempts + 1, lease_expires_at = now() + make_interval(secs => p_lease_s)
                 WHERE id = v_job.id
                RETURNING *;
                v_taken := v_taken + 1;
                v_running := v_running + 1;
                v_by_provider := jsonb_set(v_by_provider, ARRAY[v_job.provider],
                    to_jsonb(coalesce((v_by_provider ->> v_job.provider)::integer, 0) + 1));
            END IF;
        END IF;
        v_skipped_projects := v_skipped_projects || v_job.project_id;
    END LOOP;
END
$$;

CREATE TABLE agentd_streams (
    stream_id  text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz
);
CREATE INDEX agentd_streams_closed ON agentd_streams (closed_at) WHERE closed_at IS NOT NULL;

-- No foreign key to agentd_streams: publishes check the stream in the same statement (an open stream is
-- required), and a foreign key would cost a trigger per inserted event.
CREATE TABLE agentd_events (
    stream_id  text NOT NULL,
    seq        integer NOT NULL,
    type       text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, seq)
);
