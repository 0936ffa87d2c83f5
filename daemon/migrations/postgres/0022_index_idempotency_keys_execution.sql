-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY idempotency_keys_execution ON idempotency_keys (execution_id);
