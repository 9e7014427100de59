-- File expiry (OpenAI's `expires_after`, or the server's --file-retention-days): a file past
-- `expires_ms` is gone for the API at once and deleted by the next sweep. NULL: kept until
-- deleted.
ALTER TABLE files ADD COLUMN expires_ms BIGINT;
CREATE INDEX IF NOT EXISTS files_expiry ON files (expires_ms);
