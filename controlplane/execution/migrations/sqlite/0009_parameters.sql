-- Parameter values: {"plain": {...}, "sealed": {...}}; secret values are
-- sealed (AES-GCM) and never stored in plain text.
ALTER TABLE executions ADD COLUMN parameters TEXT NOT NULL DEFAULT '{}';
