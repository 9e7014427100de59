-- The Batch API: uploaded files (JSONL text, shared by replicas through the database),
-- batch jobs with a lease (one replica runs a batch at a time; a dead replica's lease lapses
-- and another resumes), and one result row per finished input line (so a resumed batch
-- never sends a line twice).
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_tenant ON files (tenant_id, created_ms);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    in_progress_ms BIGINT,
    finalizing_ms BIGINT,
    completed_ms BIGINT,
    failed_ms BIGINT,
    cancelling_ms BIGINT,
    cancelled_ms BIGINT,
    expired_ms BIGINT,
    total BIGINT NOT NULL,
    completed BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_tenant ON batches (tenant_id, created_ms);
CREATE INDEX IF NOT EXISTS batches_work ON batches (status, lease_until);
CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
-- Budget counters are seeded from the daily aggregates of one key.
CREATE INDEX IF NOT EXISTS usage_daily_key ON usage_daily (key_id, day);
