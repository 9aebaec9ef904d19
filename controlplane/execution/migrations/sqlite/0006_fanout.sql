-- Fan-out: targets at once, rolling batches and the failure threshold,
-- resolved to numbers when the execution is created.
ALTER TABLE executions ADD COLUMN max_parallel INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN batch_pause_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN current_batch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN batch_ready_at TIMESTAMP NULL;
ALTER TABLE executions ADD COLUMN max_failures INTEGER NOT NULL DEFAULT -1;
ALTER TABLE tasks ADD COLUMN batch INTEGER NOT NULL DEFAULT 0;
