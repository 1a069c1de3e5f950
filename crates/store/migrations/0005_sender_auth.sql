-- Sender authentication (issue #14).

-- A message that failed DMARC under p=quarantine is queued for the recipient's
-- Junk mailbox; the flag travels with the queue entry to the MDA.
ALTER TABLE queue_messages ADD COLUMN quarantine BOOLEAN NOT NULL DEFAULT FALSE;

-- DKIM signing keys (RFC 6376 §3.6.1, RFC 8463). The private key is PKCS#8
-- DER and never leaves the store through the Admin API; the public key is
-- what the `p=` tag of the DNS record carries (SubjectPublicKeyInfo DER for
-- RSA, the raw 32 bytes for Ed25519).
CREATE TABLE dkim_keys (
    id           @ID@,
    domain_id    BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector     TEXT NOT NULL,
    algorithm    TEXT NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    private_key  @BYTES@ NOT NULL,
    public_key   @BYTES@ NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,                  -- no longer signs; listed until removed
    UNIQUE (domain_id, selector)
);
