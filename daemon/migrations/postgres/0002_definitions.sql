-- Workflow definitions: one row per workflow, one per immutable version.
CREATE TABLE workflows (
    tenant_id      UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    latest_version BIGINT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    create_time    TIMESTAMPTZ NOT NULL,
    update_time    TIMESTAMPTZ NOT NULL,
    -- Set by DeleteDefinition; versions stay for the executions that pinned them.
    delete_time    TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE workflow_versions (
    tenant_id    UUID NOT NULL,
    name         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    content_hash TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    spec         TEXT NOT NULL,
    source       TEXT NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES workflows (tenant_id, name) ON DELETE CASCADE
);
