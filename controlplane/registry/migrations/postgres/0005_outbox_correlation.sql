-- The request that caused each event (the correlation id of the API
-- call), carried to the bus and the audit service's events.
ALTER TABLE outbox ADD COLUMN correlation_id TEXT NOT NULL DEFAULT '';
