-- Triggers registered by apply (the latest version's `triggers:`), and the record of each
-- fire: one row per trigger and scheduled time, written in the transaction of the
-- execution it starts, so a time fires once however many daemons see it due.
CREATE TABLE triggers (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow            TEXT NOT NULL,
    key                 TEXT NOT NULL,
    kind                TEXT NOT NULL,
    spec                TEXT NOT NULL,
    version             INTEGER NOT NULL,
    webhook_path        TEXT,
    paused              BOOLEAN NOT NULL DEFAULT 0,
    last_scheduled_time TEXT,
    last_fire_time      TEXT,
    last_execution_id   BLOB,
    last_result         TEXT,
    create_time         TEXT NOT NULL,
    update_time         TEXT NOT NULL,
    UNIQUE (tenant_id, workflow, key)
);
CREATE UNIQUE INDEX triggers_webhook_path ON triggers (tenant_id, webhook_path)
    WHERE webhook_path IS NOT NULL;
CREATE INDEX triggers_kind ON triggers (kind);

CREATE TABLE trigger_fires (
    trigger_id     BLOB NOT NULL,
    scheduled_time TEXT NOT NULL,
    tenant_id      BLOB NOT NULL,
    execution_id   BLOB NOT NULL,
    fire_time      TEXT NOT NULL,
    PRIMARY KEY (trigger_id, scheduled_time)
) WITHOUT ROWID;
