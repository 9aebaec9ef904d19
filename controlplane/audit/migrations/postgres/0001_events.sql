-- Every domain event of every service, as the bus delivered it: the
-- queryable history (GET /api/v1/events). The id makes a redelivery a
-- no-op.
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,
    source          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    correlation_id  TEXT NOT NULL DEFAULT '',
    version         INTEGER NOT NULL,
    payload         TEXT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_time ON events (occurred_at DESC, id DESC);
CREATE INDEX events_type ON events (type, occurred_at DESC);
CREATE INDEX events_subject ON events (subject, occurred_at DESC);

CREATE TABLE outbox (
    seq            BIGSERIAL PRIMARY KEY,
    topic          TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    aggregate_seq  BIGINT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);
