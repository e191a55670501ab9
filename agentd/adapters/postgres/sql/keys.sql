-- Named queries of the PostgreSQL key store (agentd.adapters.postgres.postgres_key_store).

-- name: create
INSERT INTO agentd_api_keys (id, token_hash, name, admin, projects, access, created_at)
VALUES (%(id)s, %(token_hash)s, %(name)s, %(admin)s, %(projects)s, %(access)s, %(created_at)s);

-- name: find
SELECT * FROM agentd_api_keys WHERE token_hash = %(token_hash)s;

-- name: list
SELECT * FROM agentd_api_keys ORDER BY created_at, id;

-- name: revoke
UPDATE agentd_api_keys SET revoked_at = coalesce(revoked_at, %(at)s) WHERE id = %(id)s RETURNING *;

-- name: touch
UPDATE agentd_api_keys SET last_used_at = %(at)s WHERE id = %(id)s;

-- name: any_active
SELECT EXISTS (SELECT 1 FROM agentd_api_keys WHERE revoked_at IS NULL) AS found;

-- name: server_secret
-- Insert unless present, then read: the first process's value wins.
WITH ins AS (
    INSERT INTO agentd_server_secrets (name, value) VALUES (%(name)s, %(value)s)
    ON CONFLICT (name) DO NOTHING RETURNING value
)
SELECT value FROM ins UNION ALL SELECT value FROM agentd_server_secrets WHERE name = %(name)s LIMIT 1;
