-- agentd schema 4: API keys (agentd.adapters.postgres.postgres_key_store): the SHA-256 of each token,
-- never the token; and the server's own secrets (the stream-token signing key), shared by every process.

CREATE TABLE agentd_api_keys (
    id           text PRIMARY KEY,
    token_hash   text NOT NULL UNIQUE,
    name         text NOT NULL,
    admin        boolean NOT NULL,
    projects     text[] NOT NULL DEFAULT '{}',  -- empty for an admin key
    access       text NOT NULL CHECK (access IN ('read', 'write')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE agentd_server_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
