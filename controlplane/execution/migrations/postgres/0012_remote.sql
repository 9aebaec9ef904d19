-- Remote-host tasks: a host reached through any of several jump agents.
-- host is the host's display name, remote the resolved endpoint (protobuf
-- JSON of opsconductor.v1.RemoteEndpoint), "" for a task on an agent's own
-- host. Such a task has no agent until one of its candidates claims it.
ALTER TABLE tasks ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN remote TEXT NOT NULL DEFAULT '';
-- What an exclusive execution locks: the agent for an agent task,
-- "remote:address:port" for a remote-host task.
ALTER TABLE tasks ADD COLUMN target_key TEXT NOT NULL DEFAULT '';
UPDATE tasks SET target_key = agent_id;
DROP INDEX tasks_exclusive_running;
CREATE INDEX tasks_exclusive_running ON tasks (target_key, status, exclusive);

-- The jump agents that may claim a remote-host task.
CREATE TABLE task_candidates (
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    agent_id    TEXT NOT NULL,
    agent_name  TEXT NOT NULL,
    PRIMARY KEY (task_id, agent_id)
);
CREATE INDEX task_candidates_agent ON task_candidates (agent_id);
