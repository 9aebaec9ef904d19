-- A retry is a new execution linked to the one it retries.
ALTER TABLE executions ADD COLUMN parent_id TEXT NOT NULL DEFAULT '';
CREATE INDEX executions_parent ON executions (parent_id);
