-- no-transaction
-- See 0016_retention.sql: built without blocking writes, outside a transaction.
CREATE INDEX CONCURRENTLY audit_events_time ON audit_events (time);
