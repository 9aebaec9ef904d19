-- Every try of an action (retries with backoff), as a JSON array.
ALTER TABLE action_results ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
