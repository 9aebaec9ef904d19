-- Cancel: who asked and why on the execution; on each running task a flag
-- its agent learns from its next poll or lease extension.
ALTER TABLE executions ADD COLUMN cancel_requested_at TIMESTAMP NULL;
ALTER TABLE executions ADD COLUMN cancelled_by TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
