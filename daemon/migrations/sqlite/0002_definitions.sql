-- Workflow definitions: one row per workflow, one per immutable version.
CREATE TABLE workflows (
    tenant_id      BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    create_time    TEXT NOT NULL,
    update_time    TEXT NOT NULL,
    -- Set by DeleteDefinition; versions stay for the executions that pinned them.
    delete_time    TEXT,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE workflow_versions (
    tenant_id    BLOB NOT NULL,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    spec         TEXT NOT NULL,
    source       TEXT NOT NULL,
    create_time  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES workflows (tenant_id, name) ON DELETE CASCADE
);
