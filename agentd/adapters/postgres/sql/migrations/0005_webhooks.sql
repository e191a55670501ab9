-- agentd schema: webhook deliveries (agentd.adapters.postgres.postgres_webhook_outbox). Each row is one POST
-- to make; a fleet's workers claim due rows with FOR UPDATE SKIP LOCKED under a lease, so each is sent by
-- one worker at a time and a dead worker's lease expires.

CREATE TABLE agentd_webhook_deliveries (
    seq              bigserial UNIQUE,         -- creation order
    id               text PRIMARY KEY,
    project_id       text NOT NULL,
    job_id           text NOT NULL,
    event            text NOT NULL,
    url              text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_status_code integer,
    last_error       text,
    history          jsonb NOT NULL DEFAULT '[]',
    worker_id        text,
    lease_expires_at timestamptz
);
CREATE INDEX agentd_webhook_deliveries_due ON agentd_webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX agentd_webhook_deliveries_job ON agentd_webhook_deliveries (job_id);
