-- The execution's deadline, and one target's run limit.
ALTER TABLE executions ADD COLUMN deadline_at TIMESTAMPTZ NULL;
ALTER TABLE executions ADD COLUMN task_timeout_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX executions_deadline ON executions (status, deadline_at);
