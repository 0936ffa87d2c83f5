-- Step attempts and events are written only under a share lock on their execution row
-- (the checkpoint's fence), so that row exists whenever they are inserted: the foreign-key
-- triggers looked it up again for every row, at every step (a fifth of a step's statement).
-- Deleting a tenant deletes its executions' attempts and events explicitly.
ALTER TABLE step_attempts DROP CONSTRAINT step_attempts_execution_id_fkey;
ALTER TABLE execution_events DROP CONSTRAINT execution_events_execution_id_fkey;
