-- SAVEDATE (RFC 8514): when a message was saved into its mailbox (seconds
-- since the epoch). Every path that inserts a message (delivery, APPEND,
-- COPY, MOVE, the PostgreSQL functions of 0003/0004) gets it from the
-- database's clock without naming the column: a column default on
-- PostgreSQL, an insert trigger on SQLite (which cannot add a column with
-- a non-constant default). A message saved before this migration gets
-- its INTERNALDATE, the best estimate there is (a delivered message's
-- INTERNALDATE is its delivery time).
ALTER TABLE messages ADD COLUMN saved_at BIGINT;
UPDATE messages SET saved_at = internal_date;
@SAVED_AT_DEFAULT@
