-- The embedded database's schema (queue, secrets, projects, keys), applied at open by
-- agentd.adapters.embedded.database (every statement is idempotent: a file of an older version gets what
-- it lacks; PRAGMA user_version records the version). Times the queue compares (run_after,
-- lease_expires_at) are epoch seconds; the others are ISO 8601 text in UTC.

CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order and paging
    id               TEXT NOT NULL UNIQUE,
    project_id       TEXT NOT NULL,
    provider         TEXT NOT NULL,
    stream_id        TEXT NOT NULL,
    request          TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 3,
    run_after        REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease_expires_at REAL,
    idempotency_key  TEXT,
    request_hash     TEXT,
    last_error       TEXT,
    result           TEXT
);

CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs(project_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Schema 2: secrets (agentd.adapters.embedded.sqlite_secret_store), encrypted with
-- agentd.adapters.secret_crypto. `scope` is the project id, or '' for a global secret.
CREATE TABLE IF NOT EXISTS secrets (
    scope      TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Schema 3: projects (agentd.adapters.embedded.sqlite_project_store). `spec` is the project's JSON
-- (git source, template, description); `max_running` is also a column because the queue's claim reads it.
CREATE TABLE IF NOT EXISTS projects (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    max_running INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- The patch each job of a git project produced (`git diff --binary`, bytes).
CREATE TABLE IF NOT EXISTS job_patches (
    job_id     TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    patch      BLOB NOT NULL,
    created_at TEXT NOT NULL
);

-- Schema 4: API keys (agentd.adapters.embedded.sqlite_key_store): the SHA-256 of each token, never the
-- token; `projects` is a JSON array (empty for an admin key). Server secrets: the stream-token signing key.
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    admin        INTEGER NOT NULL,
    projects     TEXT NOT NULL,
    access       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE IF NOT EXISTS server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- Schema 5: webhook deliveries (agentd.adapters.embedded.sqlite_webhook_outbox). Times the sender compares
-- (next_attempt_at, lease_expires_at) are epoch seconds.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    event            TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    next_attempt_at  REAL NOT NULL,
    delivered_at     TEXT,
    last_status_code INTEGER,
    last_error       TEXT,
    history          TEXT NOT NULL DEFAULT '[]',
    worker_id        TEXT,
    lease_expires_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries(job_id);

-- Schema 6: the event log (agentd.adapters.embedded.sqlite_event_stream), fencing and retention.
-- `run` is the newest run (job attempt) that wrote to the stream: older runs' writes are refused.
CREATE TABLE IF NOT EXISTS streams (
    stream_id  TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    closed_at  REAL,
    run        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS streams_closed ON streams(closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS events (
    stream_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    type      TEXT NOT NULL,
    data      TEXT NOT NULL,
    run       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, seq)
) WITHOUT ROWID;

-- Retention: final jobs by the time they finished (ISO 8601 text sorts as time).
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
