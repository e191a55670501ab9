-- Named queries of the embedded project store (agentd.adapters.embedded.sqlite_project_store).

-- name: get
SELECT * FROM projects WHERE id = :id;

-- name: put
-- Create or update; an update keeps the creation time.
INSERT INTO projects (id, spec, max_running, created_at, updated_at)
VALUES (:id, :spec, :max_running, :now, :now)
ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, max_running = excluded.max_running,
                               updated_at = excluded.updated_at;

-- name: list
SELECT * FROM projects ORDER BY id;

-- name: delete
DELETE FROM projects WHERE id = :id;

-- name: put_patch
INSERT INTO job_patches (job_id, project_id, patch, created_at) VALUES (:job_id, :project_id, :patch, :now)
ON CONFLICT (job_id) DO UPDATE SET patch = excluded.patch, created_at = excluded.created_at;

-- name: get_patch
SELECT patch FROM job_patches WHERE job_id = :job_id AND project_id = :project_id;
