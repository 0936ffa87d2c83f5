-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY trigger_fires_execution ON trigger_fires (execution_id);
