-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY webhook_deliveries_execution ON webhook_deliveries (execution_id);
