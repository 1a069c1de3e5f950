-- IMAP METADATA (RFC 5464, issue 19): server and mailbox entries of an
-- account. mailbox_id NULL is a server entry; a mailbox's entries go with
-- it (ON DELETE CASCADE) and follow a RENAME (the id stays). `entry` is the
-- entry name as the client wrote it but lower-cased (entry names are
-- case-insensitive, RFC 5464 §3.2), e.g. /private/comment. Server entries
-- are per account, as Dovecot keeps them.
CREATE TABLE imap_metadata (
    account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    mailbox_id  BIGINT REFERENCES mailboxes(id) ON DELETE CASCADE,
    entry       TEXT NOT NULL,
    value       @BYTES@ NOT NULL
);
CREATE UNIQUE INDEX imap_metadata_entry
    ON imap_metadata (account_id, COALESCE(mailbox_id, 0), entry);
