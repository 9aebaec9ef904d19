-- Who created an execution, and whether it runs commands the safety
-- checker blocks by an (audited) override, and why.
ALTER TABLE executions ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN allow_dangerous BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE executions ADD COLUMN dangerous_reason TEXT NOT NULL DEFAULT '';
