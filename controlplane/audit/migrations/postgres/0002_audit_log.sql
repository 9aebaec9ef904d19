-- The audit log: every mutating API call and every refused one, in a hash
-- chain (each record holds the hash of the one before; the hash covers
-- every column). audit_head is the chain's end: appends lock it, so
-- records are numbered without gaps in the order they were written.
CREATE TABLE audit_log (
    seq             BIGINT PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL,
    actor           TEXT NOT NULL,
    actor_kind      TEXT NOT NULL,
    roles           TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    peer            TEXT NOT NULL,
    user_agent      TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    request         TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');
