-- \Recent (RFC 3501 §2.3.2): the first UID of a mailbox that no IMAP4rev1
-- session has been told of yet. A session that selects the mailbox
-- read-write claims every UID from here up to UIDNEXT (and later the new
-- messages it learns of) by moving it forward; the claim is one locked
-- update, so each message is recent in one session only.
ALTER TABLE mailboxes ADD COLUMN recent_uid BIGINT NOT NULL DEFAULT 1;
