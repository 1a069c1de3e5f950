-- PostgreSQL only (SQLite runs the same steps in process, where a round trip
-- costs nothing). The delivery workers' bookkeeping in one round trip:
-- `Store::finish_attempts` without reports to queue. Each statement here
-- takes a fresh snapshot (a VOLATILE function under READ COMMITTED), so the
-- locking protocol is the same as the statement-by-statement path in
-- queue.rs: lock the entry, record the results still under the worker's
-- lease, and when nobody is left to try, remove the entry and, under a lock
-- on the blob's row that anyone about to refer to it conflicts with, the blob
-- unless something still refers to it.
CREATE FUNCTION mailroom_finish_attempts(
    p_queue_id      BIGINT,
    p_worker        TEXT,
    p_ids           BIGINT[],
    p_states        TEXT[],
    p_next          BIGINT[],
    p_responses     TEXT[],
    p_delay_notices BOOLEAN[],
    p_now           BIGINT,
    OUT recorded      BIGINT[],
    OUT removed       BOOLEAN,
    OUT blob_released BOOLEAN
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_hash TEXT;
    v_open BIGINT;
BEGIN
    recorded := '{}';
    removed := FALSE;
    blob_released := FALSE;
    PERFORM 1 FROM queue_messages WHERE id = p_queue_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN; -- dropped by an operator meanwhile
    END IF;
    -- One primary-key update per result (and a count over the entry's own
    -- rows): plans that stay index scans however large the queue grows and
    -- whether or not the table was ever analysed.
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        UPDATE queue_recipients
           SET state = p_states[i], next_attempt_at = p_next[i], last_response = p_responses[i],
               attempts = attempts + 1, lease_owner = NULL, lease_until = NULL,
               delay_notified_at = CASE WHEN p_delay_notices[i] THEN p_now ELSE delay_notified_at END,
               updated_at = p_now
         WHERE id = p_ids[i] AND lease_owner = p_worker AND queue_message_id = p_queue_id;
        IF FOUND THEN
            recorded := recorded || p_ids[i];
        END IF;
    END LOOP;
    SELECT COUNT(*) FILTER (WHERE state IN ('pending', 'deferred')) INTO v_open
      FROM queue_recipients WHERE queue_message_id = p_queue_id;
    IF v_open > 0 THEN
        RETURN;
    END IF;
    DELETE FROM queue_messages WHERE id = p_queue_id RETURNING blob_hash INTO v_hash;
    removed := FOUND;
    IF v_hash IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM blobs WHERE hash = v_hash FOR UPDATE;
    BEGIN
        DELETE FROM blobs WHERE hash = v_hash
           AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_hash = v_hash)
           AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_hash = v_hash);
        blob_released := FOUND;
    EXCEPTION WHEN foreign_key_violation THEN
        -- A reference the foreign key knows of: keep the blob.
        blob_released := FALSE;
    END;
END
$$;

-- Message content is compressed with LZ4 rather than pglz: several times
-- faster to write and read, nearly the same size for mail text.
ALTER TABLE blobs ALTER COLUMN data SET COMPRESSION lz4;
