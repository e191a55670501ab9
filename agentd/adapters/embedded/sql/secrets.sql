-- Named queries of the embedded secret store (agentd.adapters.embedded.sqlite_secret_store). `scope` is
-- the project id, or '' for a global secret; `value` is ciphertext (agentd.adapters.secret_crypto).

-- name: any
-- One stored secret, to check that the master key decrypts what is stored.
SELECT scope, name, value FROM secrets LIMIT 1;

-- name: put
INSERT INTO secrets (scope, name, value, updated_at) VALUES (:scope, :name, :value, :updated_at)
ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: list
SELECT name, updated_at FROM secrets WHERE scope = :scope ORDER BY name;

-- name: delete
DELETE FROM secrets WHERE scope = :scope AND name = :name;

-- name: resolve
-- The global secrets and the project's; the caller lets the project's win.
SELECT scope, name, value FROM secrets WHERE scope IN ('', :scope);

-- name: all
SELECT scope, name, value FROM secrets;

-- name: set_value
UPDATE secrets SET value = :value WHERE scope = :scope AND name = :name;
