-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY executions_finished ON executions (tenant_id, end_time) WHERE end_time IS NOT NULL;
