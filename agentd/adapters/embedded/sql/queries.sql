-- Named queries of the embedded (SQLite) queue, loaded by agentd.adapters.embedded.sqlite_work_queue.
-- A block starts with `-- name: <name>`; parameters are sqlite3 :name placeholders. Each call of the queue
-- runs its queries in one BEGIN IMMEDIATE transaction, so a check and the write after it never interleave
-- with another call.

-- name: get
SELECT * FROM jobs WHERE id = :id;

-- name: job_by_idempotency_key
SELECT * FROM jobs WHERE project_id = :project_id AND idempotency_key = :idempotency_key;

-- name: project_busy
-- A row when the project has a queued or running job.
SELECT 1 FROM jobs WHERE project_id = :project_id AND status IN ('queued', 'running') LIMIT 1;

-- name: enqueue
INSERT INTO jobs (id, project_id, provider, stream_id, request, status, created_at, max_attempts,
                  idempotency_key, request_hash)
VALUES (:id, :project_id, :provider, :stream_id, :request, 'queued', :now, :max_attempts,
        :idempotency_key, :request_hash);

-- name: running_per_provider
SELECT provider, count(*) AS n FROM jobs WHERE status = 'running' GROUP BY provider;

-- name: next_runnable
-- The oldest queued job that may start now: past its backoff, its provider not full (`full` is a JSON
-- array of provider names), its project running fewer jobs than its `max_running` (1 for a project that
-- was never created), and no older queued job of its project waiting (a project's jobs start in
-- submission order; an older one backing off holds the turn). `exclude` (a JSON array of job ids) are jobs
-- the claiming process still runs: they, and so their project's newer jobs, wait.
SELECT id FROM jobs
 WHERE status = 'queued' AND run_after <= :now
   AND provider NOT IN (SELECT value FROM json_each(:full))
   AND id NOT IN (SELECT value FROM json_each(:exclude))
   AND (SELECT count(*) FROM jobs r WHERE r.project_id = jobs.project_id AND r.status = 'running')
       < coalesce((SELECT p.max_running FROM projects p WHERE p.id = jobs.project_id), 1)
   AND NOT EXISTS (SELECT 1 FROM jobs o
                    WHERE o.project_id = jobs.project_id AND o.status = 'queued' AND o.seq < jobs.seq)
 ORDER BY seq
 LIMIT 1;

-- name: start
UPDATE jobs SET status = 'running', worker_id = :worker_id, started_at = :now_iso, attempts = attempts + 1,
                lease_expires_at = :lease_expires_at
 WHERE id = :id;

-- name: heartbeat
-- An expired lease is lost, even before a sweep re-queues the job: it is never renewed.
UPDATE jobs SET lease_expires_at = :lease_expires_at
 WHERE id = :id AND worker_id = :worker_id AND status = 'running' AND lease_expires_at >= :now
   AND (:attempt IS NULL OR attempts = :attempt);

-- name: requeue_for_retry
UPDATE jobs SET status = 'queued', run_after = :run_after, worker_id = NULL, lease_expires_at = NULL,
                last_error = :error
 WHERE id = :id;

-- name: finish
UPDATE jobs SET status = :status, finished_at = :now_iso, result = :result, lease_expires_at = NULL
 WHERE id = :id;

-- name: cancel_queued
UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = :now_iso, result = :result
 WHERE id = :id;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1 WHERE id = :id;

-- name: list_jobs
-- Newest first. `before` is a job id (paging); an unknown one gives no rows.
SELECT * FROM jobs
 WHERE project_id = :project_id
   AND (:status IS NULL OR status = :status)
   AND (:provider IS NULL OR provider = :provider)
   AND (:created_after IS NULL OR created_at > :created_after)
   AND (:created_before IS NULL OR created_at < :created_before)
   AND (:before IS NULL OR seq < (SELECT seq FROM jobs WHERE id = :before))
 ORDER BY seq DESC
 LIMIT :limit;

-- name: list_all_jobs
-- list_jobs across every project (the dashboard, the global OpenCode stream): newest first, same filters.
SELECT * FROM jobs
 WHERE (:status IS NULL OR status = :status)
   AND (:provider IS NULL OR provider = :provider)
   AND (:created_after IS NULL OR created_at > :created_after)
   AND (:created_before IS NULL OR created_at < :created_before)
   AND (:before IS NULL OR seq < (SELECT seq FROM jobs WHERE id = :before))
 ORDER BY seq DESC
 LIMIT :limit;

-- name: lost_jobs
-- Running jobs whose lease expired (or every running job), oldest first.
SELECT id, attempts, max_attempts FROM jobs
 WHERE status = 'running' AND (:all_running OR lease_expires_at IS NULL OR lease_expires_at < :now)
 ORDER BY seq;

-- name: requeue_lost
-- `run_after`: a lease that expired under a live run (a clock jump) gives that run time to notice and stop
-- before the next attempt may start.
UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, run_after = :run_after,
                last_error = :error
 WHERE id = :id;

-- name: fail_lost
UPDATE jobs SET status = 'failed', finished_at = :now_iso, result = :result, worker_id = NULL,
                lease_expires_at = NULL, last_error = :error
 WHERE id = :id;

-- name: release
-- A worker shutting down hands a running attempt back: runnable at once, and the hand-back does not use up
-- an attempt (max_attempts grows with attempts). A job someone asked to cancel is not handed back.
UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, run_after = 0,
                max_attempts = max_attempts + 1, last_error = :reason
 WHERE id = :id AND status = 'running' AND attempts = :attempt AND cancel_requested = 0;

-- name: expired_jobs
-- Final jobs that finished before :cutoff (ISO 8601), a bounded batch at a time.
SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < :cutoff LIMIT :batch;

-- name: purge_job
DELETE FROM jobs WHERE id = :id;

-- name: purge_patch
DELETE FROM job_patches WHERE job_id = :id;
-- name: queue_stats
-- The queue gauges, read at every metrics scrape. created_at is ISO 8601 UTC text: min() is the oldest.
SELECT provider, count(*) AS queued, min(created_at) AS oldest FROM jobs WHERE status = 'queued' GROUP BY provider;
