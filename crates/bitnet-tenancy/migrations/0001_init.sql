-- Portable subset of SQL: the same text runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds (BIGINT); flags are 0/1 BIGINT; JSON is TEXT.
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    secret_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    alias TEXT,
    role TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm BIGINT,
    tpm BIGINT,
    max_parallel BIGINT,
    budget_tokens BIGINT,
    budget_period TEXT,
    expires_at BIGINT,
    blocked BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_to TEXT,
    grace_until BIGINT
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant_id);
CREATE TABLE IF NOT EXISTS usage_log (
    request_id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    ttft_ms BIGINT,
    duration_ms BIGINT NOT NULL,
    status BIGINT NOT NULL,
    finish_reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_log_key_time ON usage_log (key_id, ts_ms);
CREATE INDEX IF NOT EXISTS usage_log_tenant_time ON usage_log (tenant_id, ts_ms);
CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (day, tenant_id, key_id, model)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (ts_ms);
