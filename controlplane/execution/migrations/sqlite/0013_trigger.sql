-- What started an execution, and the schedule that fired it.
ALTER TABLE executions ADD COLUMN trigger_kind TEXT NOT NULL DEFAULT 'api';
ALTER TABLE executions ADD COLUMN schedule_id TEXT NOT NULL DEFAULT '';
CREATE INDEX executions_schedule ON executions (schedule_id, status);
