-- Idempotency keys of StartExecution, per tenant, until they expire.
CREATE TABLE idempotency_keys (
    tenant_id    UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    execution_id UUID NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    expire_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expire_time);
