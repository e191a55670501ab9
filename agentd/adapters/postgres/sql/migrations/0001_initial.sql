-- agentd schema 1: jobs (the work queue), streams and events (the durable event log).
-- Applied by agentd.adapters.postgres.migrate inside one transaction, under an advisory lock.

CREATE TABLE agentd_jobs (
    id               text PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY,  -- FIFO order and paging
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

-- Few indexes on purpose: a claim or a finish changes `status`, so every index whose predicate holds for
-- the new row version gets an entry (no HOT update). Running jobs are few (one per busy worker), so recover
-- and the limits scan agentd_jobs_one_running_per_project instead of indexes of their own.
-- The claim scans queued jobs in FIFO order.
CREATE INDEX agentd_jobs_queued ON agentd_jobs (seq) WHERE status = 'queued';
-- One running job per project, fleet-wide: the claim keeps it, this index makes it a fact.
CREATE UNIQUE INDEX agentd_jobs_one_running_per_project ON agentd_jobs (project_id) WHERE status = 'running';
-- busy="reject" and the wake-up after a finish ask whether a project has a queued job.
CREATE INDEX agentd_jobs_queued_project ON agentd_jobs (project_id) WHERE status = 'queued';
-- list_jobs: newest first per project.
CREATE INDEX agentd_jobs_project ON agentd_jobs (project_id, seq DESC);
CREATE UNIQUE INDEX agentd_jobs_idempotency ON agentd_jobs (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Hands the oldest runnable queued jobs (up to p_max) to p_worker_id, in one statement: one round trip, one
-- commit, a few set-based steps per batch.
--   1. The oldest runnable jobs, row-locked with SKIP LOCKED: concurrent claimers take different rows.
--   2. Of those, the first of each project within the providers' free slots, whose per-project advisory
--      lock this claimer gets: SKIP LOCKED alone lets two claimers take two jobs of the SAME project, each
--      seeing no running job in its snapshot; with the lock they take turns.
--   3. Start them, re-checking "no running job in the project" in a statement of its own: a statement's
--      snapshot is taken when it starts, so only a statement after the locks sees every claim committed
--      before them.
-- Projects seen in a round are skipped in the next, so the loop ends. Limits count running jobs, so
-- claimers that enforce limits take one fleet-wide lock for their (short) transaction: two of them never
-- both take the last free slot. The unique index agentd_jobs_one_running_per_project backs all this up.
CREATE FUNCTION agentd_claim(
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
               AND NOT EXISTS (
                   SELECT 1 FROM agentd_jobs r WHERE r.project_id = j.project_id AND r.status = 'running')
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
               AND NOT EXISTS (
                   SELECT 1 FROM agentd_jobs r WHERE r.project_id = j.project_id AND r.status = 'running')
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
