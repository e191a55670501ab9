-- Named queries of the embedded event log, loaded by agentd.adapters.embedded.sqlite_event_stream. Each call
-- runs its queries in one BEGIN IMMEDIATE transaction. Times are epoch seconds.

-- name: create_stream
INSERT OR IGNORE INTO streams (stream_id, created_at) VALUES (:stream_id, :now);

-- name: stream
SELECT closed_at, run FROM streams WHERE stream_id = :stream_id;

-- name: head
SELECT coalesce(max(seq), 0) FROM events WHERE stream_id = :stream_id;

-- name: set_run
-- Fencing: the newest run that wrote to the stream; older runs are refused from now on.
UPDATE streams SET run = :run WHERE stream_id = :stream_id AND run < :run;

-- name: insert_event
INSERT INTO events (stream_id, seq, type, data, run) VALUES (:stream_id, :seq, :type, :data, :run);

-- name: close_stream
UPDATE streams SET closed_at = coalesce(closed_at, :now) WHERE stream_id = :stream_id;

-- name: read_events
SELECT seq, type, data FROM events WHERE stream_id = :stream_id AND seq > :after ORDER BY seq LIMIT :limit;

-- name: expired_streams
-- Closed streams whose retention has passed, a bounded batch at a time.
SELECT stream_id FROM streams WHERE closed_at IS NOT NULL AND closed_at < :cutoff LIMIT :batch;

-- name: delete_events
DELETE FROM events WHERE stream_id = :stream_id;

-- name: delete_stream
DELETE FROM streams WHERE stream_id = :stream_id;
