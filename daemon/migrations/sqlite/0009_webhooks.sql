-- Outbound webhooks: the tenant's endpoint, and a durable outbox of deliveries.
ALTER TABLE tenants ADD COLUMN webhook_url TEXT;
ALTER TABLE tenants ADD COLUMN webhook_secret TEXT;

CREATE TABLE webhook_deliveries (
    id             BLOB PRIMARY KEY,
    tenant_id      BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    execution_id   BLOB NOT NULL,
    url            TEXT NOT NULL,
    secret_name    TEXT,
    payload        TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   TEXT NOT NULL,
    last_error     TEXT,
    last_status    INTEGER,
    create_time    TEXT NOT NULL,
    delivered_time TEXT,
    expire_time    TEXT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant_id, id DESC);
