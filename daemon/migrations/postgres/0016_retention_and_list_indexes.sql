-- Lists at scale: a filtered list walks an index in id order (ids are UUIDv7, so newest
-- first is id DESC) instead of the tenant's whole history. A time range becomes an id range
-- on any of them.
CREATE INDEX executions_tenant_workflow ON executions (tenant_id, workflow, id);
CREATE INDEX executions_tenant_status ON executions (tenant_id, status, id);
CREATE INDEX executions_tenant_workflow_status ON executions (tenant_id, workflow, status, id);

-- Retention: finished executions by when they ended (end_time is set exactly while an
-- execution is in a terminal status).
CREATE INDEX executions_finished ON executions (tenant_id, end_time)
    WHERE end_time IS NOT NULL;
-- How long a tenant's finished executions are kept; NULL: the installation's default.
ALTER TABLE tenants ADD COLUMN retention_seconds BIGINT;

-- Rows that belong to an execution, found by it when it is deleted.
CREATE INDEX webhook_deliveries_execution ON webhook_deliveries (execution_id);
CREATE INDEX idempotency_keys_execution ON idempotency_keys (execution_id);
CREATE INDEX trigger_fires_execution ON trigger_fires (execution_id);
-- Audit events past their retention, oldest first.
CREATE INDEX audit_events_time ON audit_events (time);

-- Work that one daemon of an installation does at a time (the retention janitor): who holds
-- it until when.
CREATE TABLE singleton_leases (
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
