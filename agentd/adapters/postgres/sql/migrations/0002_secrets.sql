-- agentd schema 2: secrets (agentd.adapters.postgres.postgres_secret_store), encrypted with
-- agentd.adapters.secret_crypto (AES-256-GCM under the master key, bound to scope and name).

CREATE TABLE agentd_secrets (
    scope      text NOT NULL,   -- the project id, or '' for a global secret (given to every project)
    name       text NOT NULL,
    value      bytea NOT NULL,  -- ciphertext, never the value
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name)
);
