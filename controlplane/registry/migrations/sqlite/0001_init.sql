CREATE TABLE agents (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    labels           TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    os               TEXT NOT NULL,
    arch             TEXT NOT NULL,
    agent_version    TEXT NOT NULL,
    credential_hash  TEXT NOT NULL,
    enrolled_at      TIMESTAMP NOT NULL,
    last_seen_at     TIMESTAMP NOT NULL,
    revoked          BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE join_tokens (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL,
    max_uses     INTEGER NOT NULL,
    uses         INTEGER NOT NULL DEFAULT 0,
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP NOT NULL
);

CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic          TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    aggregate_seq  INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TIMESTAMP NOT NULL
);
CREATE INDEX outbox_aggregate ON outbox (aggregate_id, aggregate_seq);
