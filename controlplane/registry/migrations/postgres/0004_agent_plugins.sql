-- The executors an agent reported at its last start, comma-separated;
-- '' for agents that have not reported them (they predate the report).
ALTER TABLE agents ADD COLUMN plugins TEXT NOT NULL DEFAULT '';
