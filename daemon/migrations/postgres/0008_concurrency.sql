-- Per-tenant concurrency caps: executions beyond max_concurrent_executions wait as
-- 'queued' (at most max_queued_executions of them).
ALTER TABLE tenants ADD COLUMN max_concurrent_executions INTEGER;
ALTER TABLE tenants ADD COLUMN max_queued_executions INTEGER;
CREATE INDEX executions_queued ON executions (tenant_id, id) WHERE status = 'queued';
