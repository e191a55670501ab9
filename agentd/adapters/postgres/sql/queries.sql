-- Named queries, loaded by agentd.adapters.postgres.queries. A block starts with `-- name: <name>`;
-- the comment lines right after it say what it does. Parameters are psycopg %(name)s placeholders; arrays go
-- as %(name)b (binary: no per-element quoting and escaping of the text format).

-- name: enqueue
-- A new queued job, and one wake-up for idle workers in the same transaction.
WITH job AS (
    INSERT INTO agentd_jobs (id, project_id, provider, stream_id, request, max_attempts,
                             idempotency_key, request_hash)
    VALUES (%(id)s, %(project_id)s, %(provider)s, %(stream_id)s, %(request)s::jsonb, %(max_attempts)s,
            %(idempotency_key)s, %(request_hash)s)
    RETURNING *
), wake AS (
    SELECT pg_notify('agentd_jobs', 'enqueued') FROM job
)
SELECT job.* FROM job WHERE (SELECT count(*) FROM wake) >= 0;

-- name: lock_project_enqueue
-- Serialises enqueues of one project that check idempotency keys or the busy policy.
SELECT pg_advisory_xact_lock(1634168437, hashtext(%(project_id)s));

-- name: job_by_idempotency_key
SELECT * FROM agentd_jobs WHERE project_id = %(project_id)s AND idempotency_key = %(idempotency_key)s;

-- name: project_busy
-- Whether the project has a queued or running job.
SELECT EXISTS (
    SELECT 1 FROM agentd_jobs WHERE project_id = %(project_id)s AND status IN ('queued', 'running')
) AS busy;

-- name: claim
SELECT * FROM agentd_claim(%(worker_id)s, %(lease_s)s, %(max)s, %(global_max)s, %(provider_caps)s::jsonb,
                          %(exclude)b::text[]);

-- name: claim_started
-- `claim`, and in the same transaction each claimed job's `running` event (the run journal, schema 8): on a
-- job's first attempt, `running` (its data with `detail` = %(detail)s followed by the attempt, and `attempt`)
-- is appended to its stream as that run (agentd_append_fenced); `running_seq` is its number, NULL when not
-- written (a later attempt, or a stream that is unknown, closed or taken by a later run): the worker then
-- writes it the ordinary way. No NOTIFY here (the writer sends those after the commit). The job's project row
-- (project_*) comes along: the worker reads it right after the claim (PostgresProjectStore.prefetched). So
-- does whether a run of the job would get any secret (`has_secrets`: its project's or global ones), with one
-- stored secret (key_*) to check the master key against (PostgresSecretStore.claimed): a job of a project
-- without secrets needs no query of its own for them. Read in this statement's snapshot, so a secret whose
-- put committed before the claim is seen.
WITH c AS (
    SELECT * FROM agentd_claim(%(worker_id)s, %(lease_s)s, %(max)s, %(global_max)s,
                               %(provider_caps)s::jsonb, %(exclude)b::text[])
), k AS (
    SELECT scope, name, value FROM agentd_secrets LIMIT 1
)
SELECT c.*,
       CASE WHEN c.attempts = 1 THEN agentd_append_fenced(
           c.stream_id, c.attempts, 'status',
           %(running)s::jsonb || jsonb_build_object('detail', %(detail)s::text || c.attempts, 'attempt', c.attempts),
           false) END AS running_seq,
       p.id IS NOT NULL AS project_found, p.spec AS project_spec, p.created_at AS project_created_at,
       p.updated_at AS project_updated_at,
       EXISTS (SELECT 1 FROM agentd_secrets s WHERE s.scope IN ('', c.project_id)) AS has_secrets,
       k.scope AS key_scope, k.name AS key_name, k.value AS key_value
  FROM c LEFT JOIN agentd_projects p ON p.id = c.project_id LEFT JOIN k ON true;

-- name: heartbeat
-- An expired lease is lost, even before a sweep re-queues the job: it is never renewed.
UPDATE agentd_jobs SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
 WHERE id = %(id)s AND worker_id = %(worker_id)s AND status = 'running' AND lease_expires_at >= now()
   AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s::integer)
RETURNING id;

-- name: finish
-- The run journal (schema 8/9; agentd_append_fenced, agentd_append_run_end) passes `done` in the input: for each
-- job this statement stored final, that `done` event is appended as the job's run (after `events`, the run's
-- events not written yet, [type, data] each) and its stream closed, in the same commit: a client that sees
-- `done` finds the final status. `done_seq` is the event's number; NULL without `done`, when this statement
-- did not store the job final, or when the stream refused it (unknown, closed, taken by a later run): the
-- worker then goes the ordinary way. Without `done` (finish_many, finish_and_claim) it only records results.
-- Records results: `input` is a JSON array of {id, status, result, retryable, error, attempt}, `ids` the same ids
-- (distinct; as an array they make the planner look jobs up by primary key). A retryable failure with attempts left (and no
-- cancel request) goes back to the queue after an exponential backoff instead. A final job never changes
-- again: then, and when the job is not `worker_id`'s running job, the current row comes back unchanged.
-- Wakes idle workers when a queued job may now run: one of the same project, or any when limits are in use.
-- The statement itself is agentd_finish (schema 10): a function, so that its plan is cached (see there).
SELECT (f.job).*, f.done_seq
  FROM agentd_finish(%(input)s::jsonb, %(ids)b::text[], %(worker_id)s::text, %(retry_base_s)s,
                     %(retry_max_s)s, %(wake_any)s) AS f;

-- name: request_cancel
-- A queued job ends cancelled at once (ended = true); a running one gets cancel_requested; a final job is
-- returned unchanged.
WITH target AS (
    SELECT id, status FROM agentd_jobs
     WHERE id = %(id)s AND project_id = %(project_id)s AND status IN ('queued', 'running')
    FOR UPDATE
), upd AS (
    UPDATE agentd_jobs j SET
        cancel_requested = true,
        status = CASE WHEN t.status = 'queued' THEN 'cancelled' ELSE j.status END,
        finished_at = CASE WHEN t.status = 'queued' THEN now() ELSE j.finished_at END,
        result = CASE WHEN t.status = 'queued' THEN %(cancelled)s::jsonb ELSE j.result END
    FROM target t WHERE j.id = t.id
    RETURNING j.*, t.status = 'queued' AS ended
)
SELECT * FROM upd
UNION ALL
SELECT *, false AS ended FROM agentd_jobs
 WHERE id = %(id)s AND project_id = %(project_id)s AND NOT EXISTS (SELECT 1 FROM upd);

-- name: get
SELECT * FROM agentd_jobs WHERE id = %(id)s AND project_id = %(project_id)s;

-- name: list_jobs
-- Newest first. `before` is a job id (paging); an unknown one gives no rows.
SELECT * FROM agentd_jobs
 WHERE project_id = %(project_id)s
   AND (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
   AND (%(created_after)s::timestamptz IS NULL OR created_at > %(created_after)s::timestamptz)
   AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
   AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM agentd_jobs WHERE id = %(before)s::text))
 ORDER BY seq DESC
 LIMIT %(limit)s;

-- name: list_all_jobs
-- list_jobs across every project (the dashboard, the global OpenCode stream): newest first, same filters.
SELECT * FROM agentd_jobs
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
   AND (%(created_after)s::timestamptz IS NULL OR created_at > %(created_after)s::timestamptz)
   AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
   AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM agentd_jobs WHERE id = %(before)s::text))
 ORDER BY seq DESC
 LIMIT %(limit)s;

-- name: recover
-- Running jobs whose lease expired (or all running jobs) go back to the queue, or fail for good once they
-- used their attempts. One wake-up when something was re-queued. `delay_s` (queue_policy.requeue_delay):
-- the run that held an expired lease, should it still be alive, stops before the next attempt may start.
WITH lost AS (
    SELECT id FROM agentd_jobs
     WHERE status = 'running' AND (%(all_running)s OR lease_expires_at < now())
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE agentd_jobs j SET
        status = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,
        finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
        result = CASE WHEN j.attempts >= j.max_attempts THEN jsonb_build_object(
            'status', 'failed',
            'error', format('worker lost (%%s) %%s times; giving up', %(reason)s::text, j.attempts)) END,
        last_error = format('worker lost (%%s)', %(reason)s::text),
        run_after = now() + make_interval(secs => %(delay_s)s), worker_id = NULL, lease_expires_at = NULL
    FROM lost WHERE j.id = lost.id
    RETURNING j.*
), wake AS (
    SELECT pg_notify('agentd_jobs', 'recovered') WHERE EXISTS (SELECT 1 FROM upd WHERE status = 'queued')
)
SELECT upd.* FROM upd WHERE (SELECT count(*) FROM wake) >= 0 ORDER BY seq;

-- name: create_stream
-- The stream and, only when this statement creates it, its first events (numbered 1, 2, …).
-- No NOTIFY: nobody follows a stream before its creator has handed out its id.
-- Committed without waiting for the WAL flush (synchronous_commit off, this transaction only): every caller
-- makes a synchronous commit right after (the job's INSERT at submit, the run's first event in a worker) before
-- anybody learns of the stream, and that flush covers this earlier commit too. Submit waits for one flush, not two.
WITH cfg AS (
    SELECT set_config('synchronous_commit', 'off', true)
), s AS (
    INSERT INTO agentd_streams (stream_id) VALUES (%(stream_id)s) ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), ins AS (
    INSERT INTO agentd_events (stream_id, seq, type, data)
    SELECT s.stream_id, u.ord, u.type, u.data::jsonb
      FROM s, unnest(%(types)b::text[], %(datas)b::text[]) WITH ORDINALITY AS u(type, data, ord)
    RETURNING stream_id
)
SELECT stream_id FROM s WHERE (SELECT count(*) FROM cfg) >= 0 AND (SELECT count(*) FROM ins) >= 0;

-- name: stream_state
-- Whether the stream exists, is closed, and its highest sequence number.
SELECT s.closed_at IS NOT NULL AS closed,
       coalesce((SELECT max(seq) FROM agentd_events e WHERE e.stream_id = s.stream_id), 0) AS head
  FROM agentd_streams s WHERE s.stream_id = %(stream_id)s;

-- name: last_seqs
-- Where the per-process sequence counters of these streams start.
SELECT stream_id, max(seq) AS head FROM agentd_events WHERE stream_id = ANY(%(stream_ids)b::text[])
 GROUP BY stream_id;

-- name: lock_streams
-- After a numbering conflict: lock the streams, then read max(seq) in a later statement of the transaction.
-- Locks are taken in key order, so writers never wait for each other in a cycle.
SELECT pg_advisory_xact_lock(1634168440, k)
  FROM (SELECT DISTINCT hashtext(sid) AS k FROM unnest(%(stream_ids)b::text[]) AS sid ORDER BY k) AS keys;

-- name: append_events
-- One batch of events from one process, for any number of streams, in one statement. Rows of streams that
-- are unknown or closed are not inserted, nor rows of a run older than the stream's newest run or than a row
-- before them in the batch (fencing: their publishers get StreamNotFound or RunSuperseded). The accepted rows
-- of a stream are numbered base + 1, base + 2, … (`base`: where the writer's counter for that stream stands),
-- so a refused row leaves no gap; a NULL base (a stream this writer has not written yet) is read from the
-- table here. The stream's newest run moves up; one NOTIFY per stream. Then the streams in `close_ids` are
-- closed (after this batch's rows of them: a job's `done` and the end of its stream in one statement); they
-- come back as rows with `closed_id`.
-- Every writer takes the streams' locks before it inserts, so a writer that numbers from the table under
-- those locks (after a conflict) is never overtaken between its read and its insert.
WITH locked AS (
    SELECT pg_advisory_xact_lock(1634168440, k)
      FROM (SELECT DISTINCT hashtext(sid) AS k FROM unnest(%(stream_ids)b::text[]) AS sid ORDER BY k) AS keys
), batch AS (
    SELECT u.*, max(u.run) OVER (PARTITION BY u.stream_id ORDER BY u.ord) AS top
      FROM unnest(%(stream_ids)b::text[], %(bases)b::integer[], %(runs)b::integer[], %(types)b::text[],
                  %(datas)b::text[]) WITH ORDINALITY AS u(stream_id, base, run, type, data, ord)
), ok AS (
    SELECT b.*,
           coalesce(b.base, (SELECT coalesce(max(e.seq), 0) FROM agentd_events e WHERE e.stream_id = b.stream_id))
           + row_number() OVER (PARTITION BY b.stream_id ORDER BY b.ord) AS seq
      FROM batch b
      JOIN agentd_streams s ON s.stream_id = b.stream_id AND s.closed_at IS NULL
     WHERE (b.run = 0 OR (b.run >= s.run AND b.run >= b.top)) AND (SELECT count(*) FROM locked) >= 0
), ins AS (
    INSERT INTO agentd_events (stream_id, seq, type, data, run)
    SELECT stream_id, seq, type, data::jsonb, run FROM ok
    RETURNING stream_id
), fence AS (
    -- One UPDATE per stream row (a row may be updated once per statement): the run moves up, and a stream
    -- in close_ids is closed.
    UPDATE agentd_streams s
       SET run = greatest(s.run, m.top),
           closed_at = CASE WHEN m.closing THEN coalesce(s.closed_at, now()) ELSE s.closed_at END
      FROM (SELECT x.stream_id, max(x.top) AS top, bool_or(x.closing) AS closing
              FROM (SELECT stream_id, run AS top, false AS closing FROM ok
                    UNION ALL
                    SELECT c, NULL, true FROM unnest(%(close_ids)b::text[]) AS c) AS x
             GROUP BY x.stream_id) AS m
     WHERE s.stream_id = m.stream_id AND (s.run < m.top OR m.closing)
    RETURNING s.stream_id, m.closing
), wake AS (
    -- Debounced: only the streams the writer chose (not notified in the last few ms); the others get one
    -- trailing `notify_streams` when the window closes. (The batching writer passes none and notifies after the
-- commit instead: agentd.adapters.postgres.postgres_event_stream.)
    SELECT pg_notify('agentd_events', d.stream_id)
      FROM (SELECT DISTINCT stream_id FROM ins WHERE stream_id = ANY(%(notify_ids)b::text[])) AS d
)
SELECT ok.ord, ok.seq, NULL::text AS closed_id FROM ok
 WHERE (SELECT count(*) FROM wake) >= 0 AND (SELECT count(*) FROM fence) >= 0
UNION ALL
SELECT NULL, NULL, f.stream_id FROM fence f WHERE f.closing;

-- name: stream_fence
-- A stream's newest run, locked for a `supersede` (under the stream's advisory lock).
SELECT run, closed_at IS NOT NULL AS closed FROM agentd_streams WHERE stream_id = %(stream_id)s FOR UPDATE;

-- name: set_stream_run
UPDATE agentd_streams SET run = %(run)s WHERE stream_id = %(stream_id)s;

-- name: close_stream
WITH upd AS (
    UPDATE agentd_streams SET closed_at = coalesce(closed_at, now()) WHERE stream_id = %(stream_id)s
    RETURNING stream_id
)
SELECT pg_notify('agentd_events', stream_id) FROM upd;

-- name: read_events
-- A page of events after `after`, with the stream's state in the same snapshot (no row: no stream).
SELECT s.closed_at IS NOT NULL AS closed,
       coalesce((SELECT max(seq) FROM agentd_events m WHERE m.stream_id = s.stream_id), 0) AS head,
       e.seq, e.type, e.data
  FROM agentd_streams s
  LEFT JOIN LATERAL (
      SELECT seq, type, data FROM agentd_events
       WHERE stream_id = s.stream_id AND seq > %(after)s
       ORDER BY seq LIMIT %(limit)s
  ) AS e ON true
 WHERE s.stream_id = %(stream_id)s
 ORDER BY e.seq;

-- name: prune_streams
-- Forgets closed streams whose retention has passed, and their events, a bounded batch at a time.
WITH dead AS (
    DELETE FROM agentd_streams
     WHERE stream_id IN (
         SELECT stream_id FROM agentd_streams
          WHERE closed_at < now() - make_interval(secs => %(retention_s)s)
          LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING stream_id
), gone AS (
    DELETE FROM agentd_events e USING dead WHERE e.stream_id = dead.stream_id RETURNING 1
)
SELECT count(*) AS pruned, (SELECT count(*) FROM gone) AS events FROM dead;

-- name: release
-- A worker shutting down hands a running attempt back: runnable at once, and the hand-back does not use up
-- an attempt (max_attempts grows with attempts). A job someone asked to cancel is not handed back.
WITH upd AS (
    UPDATE agentd_jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, run_after = now(),
                           max_attempts = max_attempts + 1, last_error = %(reason)s
     WHERE id = %(id)s AND status = 'running' AND attempts = %(attempt)s AND NOT cancel_requested
    RETURNING *
), wake AS (
    SELECT pg_notify('agentd_jobs', 'released') FROM upd
)
SELECT upd.* FROM upd WHERE (SELECT count(*) FROM wake) >= 0;

-- name: purge
-- Final jobs that finished more than `retention_s` ago (and so their idempotency keys), a bounded batch.
-- Their patches go with them.
WITH gone AS (
    DELETE FROM agentd_jobs WHERE id IN (
        SELECT id FROM agentd_jobs
         WHERE finished_at < now() - make_interval(secs => %(retention_s)s)
         LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING id
), patches AS (
    DELETE FROM agentd_job_patches p USING gone WHERE p.job_id = gone.id RETURNING 1
)
SELECT count(*) AS n FROM gone WHERE (SELECT count(*) FROM patches) >= 0;

-- name: notify_streams
SELECT pg_notify('agentd_events', sid) FROM unnest(%(stream_ids)b::text[]) AS sid;

-- Secrets (postgres_secret_store.py). `scope` is the project id, or '' for a global secret; `value` is
-- ciphertext (agentd.adapters.secret_crypto).

-- name: secret_any
-- One stored secret, to check that the master key decrypts what is stored.
SELECT scope, name, value FROM agentd_secrets LIMIT 1;

-- name: secret_put
INSERT INTO agentd_secrets (scope, name, value) VALUES (%(scope)s, %(name)s, %(value)s)
ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value, updated_at = now();

-- name: secret_list
SELECT name, updated_at FROM agentd_secrets WHERE scope = %(scope)s ORDER BY name;

-- name: secret_delete
DELETE FROM agentd_secrets WHERE scope = %(scope)s AND name = %(name)s RETURNING name;

-- name: secret_resolve
-- The global secrets, then the project's (which win over a global one of the same name).
SELECT scope, name, value FROM agentd_secrets WHERE scope IN ('', %(scope)s) ORDER BY scope <> '';

-- name: secret_lock_all
-- Rotation: no other transaction writes a secret until this one commits (readers go on).
LOCK TABLE agentd_secrets IN EXCLUSIVE MODE;

-- name: secret_all
SELECT scope, name, value FROM agentd_secrets;

-- name: secret_set_values
-- Rotation: new ciphertexts for many secrets at once (arrays of the same length).
UPDATE agentd_secrets s SET value = u.value
  FROM unnest(%(scopes)s::text[], %(names)s::text[], %(values)s::bytea[]) AS u(scope, name, value)
 WHERE s.scope = u.scope AND s.name = u.name;

-- name: project_get
SELECT * FROM agentd_projects WHERE id = %(id)s;

-- name: project_put
-- Create or update; an update keeps the creation time. `created` tells which.
INSERT INTO agentd_projects AS p (id, spec, max_running) VALUES (%(id)s, %(spec)s::jsonb, %(max_running)s)
ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, max_running = excluded.max_running, updated_at = now()
RETURNING p.*, (xmax = 0) AS created;

-- name: project_list
SELECT * FROM agentd_projects ORDER BY id;

-- name: project_delete
DELETE FROM agentd_projects WHERE id = %(id)s RETURNING id;

-- name: patch_put
INSERT INTO agentd_job_patches (job_id, project_id, patch) VALUES (%(job_id)s, %(project_id)s, %(patch)s)
ON CONFLICT (job_id) DO UPDATE SET patch = excluded.patch, created_at = now();

-- name: patch_get
SELECT patch FROM agentd_job_patches WHERE job_id = %(job_id)s AND project_id = %(project_id)s;

-- name: queue_stats
-- The queue gauges (agentd_queue_depth, agentd_queue_oldest_age_seconds), read at every metrics scrape: only
-- queued rows are read (the agentd_jobs_queued partial index).
SELECT provider, count(*) AS queued, min(created_at) AS oldest
  FROM agentd_jobs WHERE status = 'queued' GROUP BY provider;
