-- PostgreSQL only (SQLite runs the same steps in process, where a round trip
-- costs nothing). IMAP's three frequent writes, STORE, APPEND and EXPUNGE,
-- each in one round trip and one commit instead of five to eight round
-- trips. They keep the invariants of mailstore.rs: the lock order (account
-- row, then mailbox row, then message rows), one new MODSEQ per call given
-- to everything it changed, HIGHESTMODSEQ left alone when nothing changed,
-- the quota charged or refunded in the same transaction. Each statement
-- takes a fresh snapshot (VOLATILE functions under READ COMMITTED), after
-- the locks it needs are held. Row locks are FOR NO KEY UPDATE, the mode
-- the Rust path's `UPDATE … SET x = x` takes: FOR UPDATE would also conflict
-- with the KEY SHARE locks of foreign-key checks (a message or an expunge
-- record inserted for the mailbox) and deadlock with concurrent writers.
-- Errors are raised with SQLSTATEs of our own,
-- which the store maps back to its error kinds:
--   MRNMB  the mailbox does not exist          -> NotFound
--   MRQTA  the quota would be exceeded          -> FailedPrecondition (OVERQUOTA …)
--   MRUID  the mailbox has run out of UIDs      -> FailedPrecondition

-- STORE without keywords (+FLAGS, -FLAGS, FLAGS of system flags only; the
-- replacing form clears the keywords) on the messages whose UIDs lie in the
-- ranges p_lo[i]..p_hi[i] (ascending, disjoint; every UID of a range is
-- wanted). p_op: 0 add,
-- 1 remove, 2 replace. Returns the changed messages (new state, UID order)
-- and, with UNCHANGEDSINCE, the UIDs it refused.
CREATE FUNCTION mailroom_store_flags(
    p_mailbox         BIGINT,
    p_lo              BIGINT[],
    p_hi              BIGINT[],
    p_op              INTEGER,
    p_flags           BIGINT,
    p_unchanged_since BIGINT,
    OUT r_account        BIGINT,
    OUT r_highestmodseq  BIGINT,
    OUT r_uids           BIGINT[],
    OUT r_flags          BIGINT[],
    OUT r_keywords       TEXT[],
    OUT r_internal_dates BIGINT[],
    OUT r_sizes          BIGINT[],
    OUT r_modified       BIGINT[]
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_new      BIGINT;
    v_lo       BIGINT;
    v_hi       BIGINT;
    v_uids     BIGINT[];
    v_flags    BIGINT[];
    v_keywords TEXT[];
    v_dates    BIGINT[];
    v_sizes    BIGINT[];
    v_modified BIGINT[];
BEGIN
    SELECT mb.account_id, mb.highestmodseq INTO r_account, r_highestmodseq
      FROM mailboxes mb WHERE mb.id = p_mailbox FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', p_mailbox USING ERRCODE = 'MRNMB';
    END IF;
    v_new := r_highestmodseq + 1;
    -- One statement per range, with the bounds as scalars: the cached
    -- (generic) plan is then an index scan of (mailbox_id, uid), where a
    -- join with unnest() of the arrays would be planned afresh at every call.
    FOR i IN 1 .. coalesce(array_length(p_lo, 1), 0) LOOP
        v_lo := p_lo[i];
        v_hi := p_hi[i];
        IF p_unchanged_since IS NOT NULL THEN
            SELECT array_agg(m.uid ORDER BY m.uid) INTO v_modified
              FROM messages m
             WHERE m.mailbox_id = p_mailbox AND m.uid BETWEEN v_lo AND v_hi
               AND m.modseq > p_unchanged_since;
            IF v_modified IS NOT NULL THEN
                r_modified := coalesce(r_modified, '{}') || v_modified;
            END IF;
        END IF;
        WITH changed AS (
            UPDATE messages m
               SET flags = CASE p_op WHEN 0 THEN m.flags | p_flags
                                     WHEN 1 THEN m.flags & ~p_flags
                                     ELSE p_flags END,
                   keywords = CASE WHEN p_op = 2 THEN '' ELSE m.keywords END,
                   modseq = v_new
             WHERE m.mailbox_id = p_mailbox AND m.uid BETWEEN v_lo AND v_hi
               AND (p_unchanged_since IS NULL OR m.modseq <= p_unchanged_since)
               AND (CASE p_op WHEN 0 THEN m.flags | p_flags
                              WHEN 1 THEN m.flags & ~p_flags
                              ELSE p_flags END <> m.flags
                    OR (p_op = 2 AND m.keywords <> ''))
            RETURNING m.uid, m.flags, m.keywords, m.internal_date, m.size
        )
        SELECT array_agg(c.uid ORDER BY c.uid), array_agg(c.flags ORDER BY c.uid),
               array_agg(c.keywords ORDER BY c.uid), array_agg(c.internal_date ORDER BY c.uid),
               array_agg(c.size ORDER BY c.uid)
          INTO v_uids, v_flags, v_keywords, v_dates, v_sizes
          FROM changed c;
        IF v_uids IS NOT NULL THEN
            r_uids := coalesce(r_uids, '{}') || v_uids;
            r_flags := coalesce(r_flags, '{}') || v_flags;
            r_keywords := coalesce(r_keywords, '{}') || v_keywords;
            r_internal_dates := coalesce(r_internal_dates, '{}') || v_dates;
            r_sizes := coalesce(r_sizes, '{}') || v_sizes;
        END IF;
    END LOOP;
    IF r_uids IS NOT NULL THEN
        UPDATE mailboxes SET highestmodseq = v_new WHERE id = p_mailbox;
        r_highestmodseq := v_new;
    END IF;
END
$$;

-- APPEND: the mailbox is p_mailbox, or when that is NULL the one named
-- p_name of account p_account. Stores the content (keyed by p_hash, its
-- SHA-256) unless it is there already, charges the quota, allocates the UID
-- and the MODSEQ and inserts the message: all or nothing, one commit. The
-- blob row is ours (inserted here) or held (KEY SHARE) from the moment it is
-- known to exist, so the queue's clean-up, which deletes an unreferenced
-- blob under FOR UPDATE, cannot remove it before the message refers to it.
CREATE FUNCTION mailroom_append(
    p_mailbox       BIGINT,
    p_account       BIGINT,
    p_name          TEXT,
    p_hash          TEXT,
    p_data          BYTEA,
    p_flags         BIGINT,
    p_keywords      TEXT,
    p_internal_date BIGINT,
    p_parse_cache   TEXT,
    p_now           BIGINT,
    OUT r_mailbox     BIGINT,
    OUT r_account     BIGINT,
    OUT r_uidvalidity BIGINT,
    OUT r_uid         BIGINT,
    OUT r_modseq      BIGINT
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_size  BIGINT := length(p_data);
    v_used  BIGINT;
    v_quota BIGINT;
BEGIN
    IF p_mailbox IS NULL THEN
        SELECT mb.id, mb.account_id INTO r_mailbox, r_account
          FROM mailboxes mb WHERE mb.account_id = p_account AND mb.name = p_name;
    ELSE
        SELECT mb.id, mb.account_id INTO r_mailbox, r_account
          FROM mailboxes mb WHERE mb.id = p_mailbox;
    END IF;
    IF r_mailbox IS NULL THEN
        RAISE EXCEPTION 'no mailbox %', coalesce(p_mailbox::TEXT, p_name) USING ERRCODE = 'MRNMB';
    END IF;
    LOOP
        INSERT INTO blobs (hash, size, data, created_at)
        VALUES (p_hash, v_size, p_data, p_now)
        ON CONFLICT (hash) DO NOTHING;
        EXIT WHEN FOUND; -- ours, invisible to others until we commit
        PERFORM 1 FROM blobs WHERE hash = p_hash FOR KEY SHARE;
        EXIT WHEN FOUND;
        -- Deleted between the two statements: store it again.
    END LOOP;
    UPDATE accounts SET used_bytes = used_bytes + v_size
     WHERE id = r_account AND (quota_bytes = 0 OR used_bytes + v_size <= quota_bytes);
    IF NOT FOUND THEN
        SELECT a.used_bytes, a.quota_bytes INTO v_used, v_quota FROM accounts a WHERE a.id = r_account;
        RAISE EXCEPTION 'OVERQUOTA storing % more bytes would exceed the quota (% of % bytes used)',
            v_size, v_used, v_quota USING ERRCODE = 'MRQTA';
    END IF;
    UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
     WHERE id = r_mailbox
    RETURNING uidvalidity, uidnext - 1, highestmodseq INTO r_uidvalidity, r_uid, r_modseq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', r_mailbox USING ERRCODE = 'MRNMB';
    END IF;
    IF r_uid > 4294967295 THEN
        RAISE EXCEPTION 'the mailbox has run out of UIDs' USING ERRCODE = 'MRUID';
    END IF;
    INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
                          blob_hash, prefix, parse_cache)
    VALUES (r_mailbox, r_uid, r_modseq, p_flags, p_keywords, p_internal_date, v_size,
            p_hash, '\x'::BYTEA, p_parse_cache);
END
$$;

-- EXPUNGE (p_lo NULL) and UID EXPUNGE (only UIDs within the ranges
-- p_lo[i]..p_hi[i]): removes the messages flagged \Deleted, records them as
-- expunged with one new MODSEQ and refunds their sizes. (The UID bounds,
-- always true, make the plan an index scan of (mailbox_id, uid) whatever
-- the table's statistics; a bitmap scan of the MODSEQ index, which the
-- planner may pick otherwise, reads every dead index entry of the mailbox
-- again and again until a VACUUM.)
CREATE FUNCTION mailroom_expunge(
    p_mailbox BIGINT,
    p_lo      BIGINT[],
    p_hi      BIGINT[],
    OUT r_account       BIGINT,
    OUT r_highestmodseq BIGINT,
    OUT r_uids          BIGINT[]
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_new   BIGINT;
    v_freed BIGINT;
BEGIN
    SELECT a.id INTO r_account
      FROM accounts a WHERE a.id = (SELECT mb.account_id FROM mailboxes mb WHERE mb.id = p_mailbox)
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', p_mailbox USING ERRCODE = 'MRNMB';
    END IF;
    SELECT mb.highestmodseq INTO r_highestmodseq FROM mailboxes mb WHERE mb.id = p_mailbox FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', p_mailbox USING ERRCODE = 'MRNMB';
    END IF;
    v_new := r_highestmodseq + 1;
    WITH gone AS (
        DELETE FROM messages m
         WHERE m.mailbox_id = p_mailbox AND m.uid BETWEEN 1 AND 4294967295
           AND (m.flags & 8) <> 0
           AND (p_lo IS NULL OR EXISTS (SELECT 1 FROM unnest(p_lo, p_hi) AS r(lo, hi)
                                         WHERE m.uid BETWEEN r.lo AND r.hi))
        RETURNING m.uid, m.size
    ), recorded AS (
        INSERT INTO expunged (mailbox_id, uid, modseq)
        SELECT p_mailbox, g.uid, v_new FROM gone g
    )
    SELECT array_agg(g.uid ORDER BY g.uid), sum(g.size) INTO r_uids, v_freed FROM gone g;
    IF r_uids IS NOT NULL THEN
        UPDATE mailboxes SET highestmodseq = v_new WHERE id = p_mailbox;
        UPDATE accounts SET used_bytes = greatest(used_bytes - v_freed, 0) WHERE id = r_account;
        r_highestmodseq := v_new;
    END IF;
END
$$;
