-- Records of calls made to another process's services (split mode) come
-- over the event bus: the event id of each one appended, so a
-- redelivered record is not appended twice.
CREATE TABLE audit_forwarded (
    event_id TEXT PRIMARY KEY,
    seq      BIGINT NOT NULL
);

-- When a forwarded call was made (audit_log.at is when it joined the
-- chain); NULL for calls recorded where they were made.
ALTER TABLE audit_log ADD COLUMN called_at TIMESTAMP;
