-- Execution policy: the merged policy in force, why an execution ended as
-- it did, the earlier execution it waits for (concurrency "queue"), and
-- the idempotency key of the request that made it. A task's queue
-- deadline runs from the moment it may be claimed.
ALTER TABLE executions ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE executions ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN waiting_for TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN idempotency_key TEXT NULL;
CREATE UNIQUE INDEX executions_idempotency ON executions (idempotency_key);
CREATE INDEX executions_waiting ON executions (waiting_for);
ALTER TABLE tasks ADD COLUMN queue_timeout_seconds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN queue_expires_at TIMESTAMP NULL;
CREATE INDEX tasks_queue_expiry ON tasks (status, queue_expires_at);

-- One row per job that has run: creating an execution locks it, so
-- concurrency policies hold when two requests race.
CREATE TABLE job_locks (
    job_id TEXT PRIMARY KEY
);
