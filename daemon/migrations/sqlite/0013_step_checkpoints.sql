-- Progress of running attempts, durable as it is made: an ai/completion step's model
-- answers and tool results, so a later attempt goes on from them. Model calls carry their
-- usage, which budgets add up per execution and per tenant and day.
CREATE TABLE step_checkpoints (
    execution_id  BLOB NOT NULL,
    step_name     TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    tenant_id     BLOB NOT NULL,
    attempt       INTEGER NOT NULL,
    time          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    model         TEXT,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL NOT NULL DEFAULT 0,
    body          TEXT NOT NULL,
    PRIMARY KEY (execution_id, step_name, generation, seq)
) WITHOUT ROWID;
-- A tenant's usage of a day.
CREATE INDEX step_checkpoints_tenant_time ON step_checkpoints (tenant_id, time)
    WHERE model IS NOT NULL;
