-- Secrets jump agents log in to remote hosts with. sealed is the value
-- under AES-256-GCM with key key_id (bound to the credential's name);
-- hosts is a JSON array of the address patterns it may be used for.
CREATE TABLE credentials (
    name         TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    description  TEXT NOT NULL,
    hosts        TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE outbox (
    seq            BIGSERIAL PRIMARY KEY,
    topic          TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    aggregate_seq  BIGINT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX outbox_aggregate ON outbox (aggregate_id, aggregate_seq);
