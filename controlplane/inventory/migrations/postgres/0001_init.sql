-- Remote hosts and their groups. source is "api" or "sync" (imported
-- from the external inventory, replaced by each good import). labels are
-- JSON objects.
CREATE TABLE hosts (
    name        TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    port        INTEGER NOT NULL,
    transport   TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    credential  TEXT NOT NULL,
    labels      TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE host_groups (
    group_name  TEXT NOT NULL,
    host_name   TEXT NOT NULL REFERENCES hosts (name),
    PRIMARY KEY (group_name, host_name)
);
CREATE INDEX host_groups_host ON host_groups (host_name);

CREATE TABLE groups (
    name         TEXT PRIMARY KEY,
    description  TEXT NOT NULL,
    labels       TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- The external inventory import: one row.
CREATE TABLE sync_status (
    id                 INTEGER PRIMARY KEY,
    last_attempt_at    TIMESTAMPTZ NULL,
    last_success_at    TIMESTAMPTZ NULL,
    last_error         TEXT NOT NULL,
    hosts              INTEGER NOT NULL,
    skipped            TEXT NOT NULL
);
INSERT INTO sync_status (id, last_error, hosts, skipped) VALUES (1, '', 0, '[]');

CREATE TABLE outbox (
    seq            BIGSERIAL PRIMARY KEY,
    topic          TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    aggregate_seq  BIGINT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX outbox_aggregate ON outbox (aggregate_id, aggregate_seq);
