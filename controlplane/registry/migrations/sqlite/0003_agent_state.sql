-- active agents get new tasks; draining and paused ones only finish theirs.
ALTER TABLE agents ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
