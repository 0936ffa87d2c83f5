-- An attempt that ended because its daemon stopped says so in a column of its own, which
-- recovery reads (the step gets a new attempt), instead of by its error message. Attempts
-- recorded so before carry only the message, the one the engine wrote then: they are
-- marked here, once.
ALTER TABLE step_attempts ADD COLUMN interrupted BOOLEAN NOT NULL DEFAULT 0;
UPDATE step_attempts SET interrupted = 1
    WHERE status = 'cancelled'
    AND error = 'interrupted: the daemon running this attempt stopped';
