-- Exclusive executions lock each target while they run there. The flag is
-- copied onto their tasks so the claim's lock check is an index lookup.
ALTER TABLE executions ADD COLUMN exclusive BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tasks ADD COLUMN exclusive BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX tasks_exclusive_running ON tasks (agent_id, status, exclusive);
