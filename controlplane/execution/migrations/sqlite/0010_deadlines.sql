-- The execution's deadline, and one target's run limit.
ALTER TABLE executions ADD COLUMN deadline_at TIMESTAMP NULL;
ALTER TABLE executions ADD COLUMN task_timeout_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX executions_deadline ON executions (status, deadline_at);
