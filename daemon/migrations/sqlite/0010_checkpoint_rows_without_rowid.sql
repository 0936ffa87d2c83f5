-- Step attempts and events are found by their primary key only: stored in that key's
-- B-tree (WITHOUT ROWID), a checkpoint writes one B-tree page per table instead of two
-- (the rowid table and the key's index), so a step's commit writes half the pages.
CREATE TABLE step_attempts_by_key (
    execution_id BLOB NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_name    TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    tenant_id    BLOB NOT NULL,
    generation   INTEGER NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    wake_time    TEXT,
    start_time   TEXT,
    end_time     TEXT,
    PRIMARY KEY (execution_id, step_name, attempt)
) WITHOUT ROWID;
INSERT INTO step_attempts_by_key SELECT execution_id, step_name, attempt, tenant_id,
    generation, status, output, error, wake_time, start_time, end_time FROM step_attempts;
DROP TABLE step_attempts;
ALTER TABLE step_attempts_by_key RENAME TO step_attempts;

CREATE TABLE execution_events_by_key (
    execution_id BLOB NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    tenant_id    BLOB NOT NULL,
    time         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    step_name    TEXT,
    attempt      INTEGER,
    status       TEXT,
    message      TEXT,
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;
INSERT INTO execution_events_by_key SELECT execution_id, seq, tenant_id, time, kind,
    step_name, attempt, status, message FROM execution_events;
DROP TABLE execution_events;
ALTER TABLE execution_events_by_key RENAME TO execution_events;
