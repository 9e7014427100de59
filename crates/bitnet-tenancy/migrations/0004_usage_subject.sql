-- The caller behind a usage row when it is not the key itself: `oidc:SUB` for an SSO caller
-- (who shares the tenant's policy key), NULL for a plain API key.
ALTER TABLE usage_log ADD COLUMN subject TEXT;
CREATE INDEX IF NOT EXISTS usage_log_subject ON usage_log (subject, ts_ms);
