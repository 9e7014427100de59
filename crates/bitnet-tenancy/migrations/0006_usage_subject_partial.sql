-- Most usage rows come from plain API keys (subject NULL): index only the rows that name an
-- SSO caller, so a plain key's row costs one index update less. A `subject = …` filter implies
-- `subject IS NOT NULL`, so SQLite and PostgreSQL both still use this index for it.
DROP INDEX IF EXISTS usage_log_subject;
CREATE INDEX IF NOT EXISTS usage_log_subject ON usage_log (subject, ts_ms) WHERE subject IS NOT NULL;
