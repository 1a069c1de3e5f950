-- Mailroom schema, one text for both backends: @ID@ and @BYTES@ are replaced by
-- the dialect's serial key and byte-string types when the migration is loaded.
-- Times are Unix seconds (BIGINT) so that
-- both backends store and compare them the same way.

CREATE TABLE domains (
    id          @ID@,
    name        TEXT NOT NULL UNIQUE,          -- canonical A-label form, lower case
    created_at  BIGINT NOT NULL
);

CREATE TABLE accounts (
    id             @ID@,
    domain_id      BIGINT NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
    address        TEXT NOT NULL UNIQUE,       -- canonical local@domain
    password_hash  TEXT NOT NULL,              -- argon2id PHC string
    scram_sha256   TEXT,                       -- SCRAM-SHA-256 stored/server keys (RFC 5802), for SASL
    quota_bytes    BIGINT NOT NULL DEFAULT 0,  -- 0: unlimited
    used_bytes     BIGINT NOT NULL DEFAULT 0,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL
);

CREATE TABLE aliases (
    id          @ID@,
    domain_id   BIGINT NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
    source      TEXT NOT NULL,                 -- local@domain, or @domain for a catch-all
    target      TEXT NOT NULL,                 -- any address, local or remote
    created_at  BIGINT NOT NULL,
    UNIQUE (source, target)
);

CREATE TABLE dkim_keys (
    id           @ID@,
    domain_id    BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector     TEXT NOT NULL,
    algorithm    TEXT NOT NULL,                -- rsa-sha256 | ed25519-sha256
    private_key  TEXT NOT NULL,                -- PKCS#8 PEM
    public_key   TEXT NOT NULL,                -- base64 for the DNS record
    active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   BIGINT NOT NULL,
    UNIQUE (domain_id, selector)
);

CREATE TABLE mailboxes (
    id             @ID@,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,              -- full UTF-8 path, '/' delimited
    special_use    TEXT,                       -- \Sent, \Drafts, \Junk, \Trash, \Archive
    subscribed     BOOLEAN NOT NULL DEFAULT TRUE,
    uidvalidity    BIGINT NOT NULL,
    uidnext        BIGINT NOT NULL DEFAULT 1,
    highestmodseq  BIGINT NOT NULL DEFAULT 1,
    created_at     BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

-- Message content, stored once however many mailboxes hold it.
CREATE TABLE blobs (
    hash        TEXT PRIMARY KEY,              -- hex SHA-256 of data
    size        BIGINT NOT NULL,
    data        @BYTES@ NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE messages (
    id             @ID@,
    mailbox_id     BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid            BIGINT NOT NULL,
    modseq         BIGINT NOT NULL,
    flags          BIGINT NOT NULL DEFAULT 0,  -- system flags as a bit set
    keywords       TEXT NOT NULL DEFAULT '',   -- space-separated keywords
    internal_date  BIGINT NOT NULL,
    size           BIGINT NOT NULL,
    blob_hash      TEXT NOT NULL REFERENCES blobs(hash),
    prefix         @BYTES@ NOT NULL,             -- per-recipient header lines before the shared blob
                                               -- (Return-Path, Delivered-To, Authentication-Results)
    parse_cache    TEXT,                       -- envelope/bodystructure cached at delivery
    delivery_key   TEXT,                       -- queue entry + recipient: idempotent delivery
    UNIQUE (mailbox_id, uid)
);
CREATE UNIQUE INDEX messages_delivery_key ON messages (mailbox_id, delivery_key)
    WHERE delivery_key IS NOT NULL;
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE INDEX messages_blob ON messages (blob_hash);

-- Expunged UIDs, kept for QRESYNC (VANISHED).
CREATE TABLE expunged (
    mailbox_id  BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid         BIGINT NOT NULL,
    modseq      BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
-- What vanished since a MODSEQ (QRESYNC, and every IMAP session's sync).
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);

CREATE TABLE queue_messages (
    id                @ID@,
    sender            TEXT NOT NULL,           -- '' is the null sender
    blob_hash         TEXT NOT NULL REFERENCES blobs(hash),
    size              BIGINT NOT NULL,
    env_id            TEXT,                    -- DSN ENVID
    ret               TEXT,                    -- DSN RET: FULL | HDRS
    body_type         TEXT,                    -- 7BIT | 8BITMIME | BINARYMIME
    smtputf8          BOOLEAN NOT NULL DEFAULT FALSE,
    requiretls        BOOLEAN NOT NULL DEFAULT FALSE,
    authenticated_as  TEXT,
    client_ip         TEXT,
    trace_context     TEXT,                    -- W3C traceparent of the accepting session
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL
);
-- Whether a finished entry's blob is still needed (see queue.rs, "Removal").
CREATE INDEX queue_messages_blob ON queue_messages (blob_hash);

CREATE TABLE queue_recipients (
    id                @ID@,
    queue_message_id  BIGINT NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    address           TEXT NOT NULL,
    domain            TEXT NOT NULL,           -- the address's domain, lower case, for routing
    orcpt             TEXT,                    -- DSN ORCPT
    notify            TEXT,                    -- DSN NOTIFY
    state             TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'deferred', 'delivered', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    last_response     TEXT,
    lease_owner       TEXT,
    lease_until       BIGINT,
    delay_notified_at BIGINT,                  -- when a delay DSN (RFC 3464 action=delayed) was queued
    updated_at        BIGINT NOT NULL
);
CREATE INDEX queue_recipients_message ON queue_recipients (queue_message_id);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt_at)
    WHERE state IN ('pending', 'deferred');
-- A worker renews (and at shutdown releases) every lease it holds at once.
CREATE INDEX queue_recipients_lease ON queue_recipients (lease_owner)
    WHERE lease_owner IS NOT NULL;
