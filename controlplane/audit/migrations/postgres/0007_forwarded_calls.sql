-- Records of calls made to another process's services (split mode) come
-- over the event bus: the event id of each one appended, so a
-- redelivered record is not appended twice.
CREATE TABLE audit_forwarded (
    event_id TEXT PRIMARY KEY,
    seq      BIGINT NOT NULL
);
