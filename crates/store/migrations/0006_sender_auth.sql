-- Sender authentication (issue 14).

-- A message that failed DMARC under p=quarantine is queued for the recipient's
-- Junk mailbox; the flag travels with the queue entry to the MDA.
ALTER TABLE queue_messages ADD COLUMN quarantine BOOLEAN NOT NULL DEFAULT FALSE;
