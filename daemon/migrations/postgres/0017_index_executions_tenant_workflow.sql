-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY executions_tenant_workflow ON executions (tenant_id, workflow, id);
