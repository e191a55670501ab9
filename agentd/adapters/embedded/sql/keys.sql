-- Named queries of the embedded key store (agentd.adapters.embedded.sqlite_key_store).

-- name: create
INSERT INTO api_keys (id, token_hash, name, admin, projects, access, created_at)
VALUES (:id, :token_hash, :name, :admin, :projects, :access, :created_at);

-- name: find
SELECT * FROM api_keys WHERE token_hash = :token_hash;

-- name: list
SELECT * FROM api_keys ORDER BY created_at, id;

-- name: revoke
UPDATE api_keys SET revoked_at = coalesce(revoked_at, :at) WHERE id = :id;

-- name: get
SELECT * FROM api_keys WHERE id = :id;

-- name: touch
UPDATE api_keys SET last_used_at = :at WHERE id = :id;

-- name: any_active
SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL) AS found;

-- name: secret_insert
INSERT INTO server_secrets (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING;

-- name: secret_get
SELECT value FROM server_secrets WHERE name = :name;
