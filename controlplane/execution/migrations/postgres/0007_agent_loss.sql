-- What happens to a task whose agent stopped reporting: fail or requeue.
ALTER TABLE executions ADD COLUMN on_agent_loss TEXT NOT NULL DEFAULT 'fail';
