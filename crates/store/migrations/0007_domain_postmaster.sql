-- The configured postmaster of a domain (issue 14, RFC 5321 §4.5.1): where
-- postmaster@<domain> goes when no alias or catch-all covers it. NULL: the
-- domain's first account.
ALTER TABLE domains ADD COLUMN postmaster TEXT;
