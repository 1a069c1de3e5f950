-- PostgreSQL only. STORE and EXPUNGE of migration 0003 with one statement
-- fewer each, and without sorting inside the database:
--
-- * the mailbox row is locked by the UPDATE that takes the new MODSEQ
--   (HIGHESTMODSEQ + 1) instead of a SELECT … FOR NO KEY UPDATE followed,
--   when something changed, by a second UPDATE; when nothing changed, the
--   MODSEQ is given back before the commit (nobody else can have taken one
--   meanwhile: the row is ours until then), so HIGHESTMODSEQ still moves
--   only with a change;
-- * the result arrays are aggregated without ORDER BY (one aggregation, so
--   the arrays stay aligned row for row); the caller sorts by UID.
--
-- Same signatures, same invariants and lock order as 0003.

CREATE OR REPLACE FUNCTION mailroom_store_flags(
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
    UPDATE mailboxes mb SET highestmodseq = mb.highestmodseq + 1
     WHERE mb.id = p_mailbox
    RETURNING mb.account_id, mb.highestmodseq INTO r_account, v_new;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', p_mailbox USING ERRCODE = 'MRNMB';
    END IF;
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
        SELECT array_agg(c.uid), array_agg(c.flags), array_agg(c.keywords),
               array_agg(c.internal_date), array_agg(c.size)
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
    IF r_uids IS NULL THEN
        UPDATE mailboxes SET highestmodseq = v_new - 1 WHERE id = p_mailbox;
        r_highestmodseq := v_new - 1;
    ELSE
        r_highestmodseq := v_new;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION mailroom_expunge(
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
    UPDATE mailboxes mb SET highestmodseq = mb.highestmodseq + 1
     WHERE mb.id = p_mailbox
    RETURNING mb.highestmodseq INTO v_new;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no mailbox %', p_mailbox USING ERRCODE = 'MRNMB';
    END IF;
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
    SELECT array_agg(g.uid), sum(g.size) INTO r_uids, v_freed FROM gone g;
    IF r_uids IS NULL THEN
        UPDATE mailboxes SET highestmodseq = v_new - 1 WHERE id = p_mailbox;
        r_highestmodseq := v_new - 1;
    ELSE
        UPDATE accounts SET used_bytes = greatest(used_bytes - v_freed, 0) WHERE id = r_account;
        r_highestmodseq := v_new;
    END IF;
END
$$;
