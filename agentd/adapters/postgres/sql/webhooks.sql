-- Named queries of agentd.adapters.postgres.postgres_webhook_outbox.

-- name: add
INSERT INTO agentd_webhook_deliveries (id, project_id, job_id, event, url, body, created_at)
VALUES (%(id)s, %(project_id)s, %(job_id)s, %(event)s, %(url)s, %(body)s, %(created_at)s)
ON CONFLICT (id) DO NOTHING;

-- name: claim_due
-- Due, unleased (or lease expired) pending deliveries, oldest first; rows another worker is claiming
-- right now are skipped, so each is handed to one worker.
UPDATE agentd_webhook_deliveries d
SET worker_id = %(worker_id)s, lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE d.id IN (
    SELECT id FROM agentd_webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at <= now())
    ORDER BY seq
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
RETURNING d.*;

-- name: record
-- One attempt's outcome; the lease ends. Only the lease holder may record.
UPDATE agentd_webhook_deliveries
SET status = %(status)s, attempts = attempts + 1,
    next_attempt_at = coalesce(%(retry_at)s, next_attempt_at),
    delivered_at = %(delivered_at)s, last_status_code = %(status_code)s, last_error = %(error)s,
    history = history || jsonb_build_array(%(attempt)s::jsonb), worker_id = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND worker_id = %(worker_id)s AND status = 'pending';

-- name: for_job
SELECT * FROM agentd_webhook_deliveries WHERE job_id = %(job_id)s ORDER BY seq;

-- name: prune
-- Finished deliveries older than the retention (pending ones stay until they end).
DELETE FROM agentd_webhook_deliveries WHERE status <> 'pending' AND created_at < %(before)s;
