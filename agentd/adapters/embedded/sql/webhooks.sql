-- name: add
-- A new pending delivery, due now.
INSERT INTO webhook_deliveries (id, project_id, job_id, event, url, body, created_at, next_attempt_at)
VALUES (:id, :project_id, :job_id, :event, :url, :body, :created_at, :now)
ON CONFLICT (id) DO NOTHING;

-- name: due
-- Pending deliveries whose time has come and that no live lease holds, oldest first.
SELECT id FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at <= :now
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
ORDER BY rowid
LIMIT :n;

-- name: lease
UPDATE webhook_deliveries SET worker_id = :worker_id, lease_expires_at = :until WHERE id = :id;

-- name: get
SELECT * FROM webhook_deliveries WHERE id = :id;

-- name: record
-- One attempt's outcome; the lease ends. Only the lease holder may record.
UPDATE webhook_deliveries
SET status = :status, attempts = attempts + 1, next_attempt_at = :next_attempt_at,
    delivered_at = :delivered_at, last_status_code = :status_code, last_error = :error,
    history = :history, worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND status = 'pending';

-- name: for_job
SELECT * FROM webhook_deliveries WHERE job_id = :job_id ORDER BY rowid;

-- name: prune
-- Finished deliveries older than the retention (pending ones stay until they end).
DELETE FROM webhook_deliveries WHERE status != 'pending' AND created_at < :before;
