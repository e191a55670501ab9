-- agentd schema 8: a run's first and last events written in the transaction of its claim and of its result.
--
-- The queue and the event log share this database, so a worker need not make a commit of its own for the
-- `running` event of a job it just claimed, nor for the `done` event and the end of the stream after it stored
-- the job's result (agentd.adapters.postgres.postgres_run_journal; queries `claim_started`, `finish_ended`).
-- Same rules as any writer of the log (queries.sql `append_events`): the stream's advisory lock is taken
-- first, so numbering (max(seq) + 1, read after the lock: a plpgsql statement takes a fresh snapshot) never
-- races another writer; a stream that is unknown or closed, or whose newest run is later than `p_run`, is
-- left alone (NULL: the caller writes the event the ordinary way, which says why); the stream's run moves up.
CREATE OR REPLACE FUNCTION agentd_append_fenced(
    p_stream_id text, p_run integer, p_type text, p_data jsonb, p_close boolean
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_run integer;
    v_seq integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1634168440, hashtext(p_stream_id));
    SELECT run INTO v_run FROM agentd_streams
     WHERE stream_id = p_stream_id AND closed_at IS NULL FOR UPDATE;
    IF NOT FOUND OR v_run > p_run THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(seq), 0) + 1 INTO v_seq FROM agentd_events WHERE stream_id = p_stream_id;
    INSERT INTO agentd_events (stream_id, seq, type, data, run) VALUES (p_stream_id, v_seq, p_type, p_data, p_run);
    UPDATE agentd_streams
       SET run = greatest(run, p_run),
           closed_at = CASE WHEN p_close THEN now() ELSE closed_at END
     WHERE stream_id = p_stream_id;
    RETURN v_seq;
END
$$;
