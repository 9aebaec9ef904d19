-- Small indexes for the hot paths, over the few rows they look for:
-- an agent's queued tasks in claim order (the claim stops at the first
-- it may take), an execution's queued tasks (whom to wake when a task
-- ends), and the exclusive tasks running on a target.
CREATE INDEX tasks_claimable ON tasks (agent_id, created_at, id) WHERE status = 'queued';
CREATE INDEX tasks_queued_by_execution ON tasks (execution_id) WHERE status = 'queued';
CREATE INDEX tasks_running_exclusive ON tasks (target_key) WHERE status = 'running' AND exclusive = TRUE;

-- Nearly every execution waits for none: an index over all of them made
-- the claim scan every execution for waiting_for = '' instead of
-- looking its execution up by id. Only the waiting ones are indexed now.
DROP INDEX executions_waiting;
CREATE INDEX executions_waiting ON executions (waiting_for) WHERE waiting_for <> '';
