-- Executions, their step attempts (the checkpoints) and their event log.
CREATE TABLE executions (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow         TEXT NOT NULL,
    version          BIGINT NOT NULL,
    status           TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    outputs          TEXT,
    error            TEXT,
    trigger_info     TEXT NOT NULL,
    create_time      TIMESTAMPTZ NOT NULL,
    start_time       TIMESTAMPTZ,
    end_time         TIMESTAMPTZ,
    -- Absolute deadline from the workflow's timeout.
    deadline         TIMESTAMPTZ,
    -- The daemon holding the lease, until when, and the fencing token of that claim.
    owner            TEXT,
    lease_expires    TIMESTAMPTZ,
    lease_epoch      BIGINT NOT NULL DEFAULT 0,
    -- When an unowned execution next needs work (a durable sleep or retry backoff).
    wake_time        TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- Incremented by RetryExecution; failed steps of older generations run again.
    generation       INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (tenant_id, workflow, version)
        REFERENCES workflow_versions (tenant_id, name, version)
);

CREATE INDEX executions_tenant_time ON executions (tenant_id, id DESC);
CREATE INDEX executions_claimable ON executions (wake_time)
    WHERE status IN ('pending', 'running');

CREATE TABLE step_attempts (
    execution_id UUID NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_name    TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    tenant_id    UUID NOT NULL,
    generation   INTEGER NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    -- For a pending retry, when it may start; for a durable sleep, when it ends.
    wake_time    TIMESTAMPTZ,
    start_time   TIMESTAMPTZ,
    end_time     TIMESTAMPTZ,
    PRIMARY KEY (execution_id, step_name, attempt)
);

CREATE TABLE execution_events (
    execution_id UUID NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    tenant_id    UUID NOT NULL,
    time         TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL,
    step_name    TEXT,
    attempt      INTEGER,
    status       TEXT,
    message      TEXT,
    PRIMARY KEY (execution_id, seq)
);
