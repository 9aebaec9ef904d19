-- Webhook subscriptions: events of the listed types are POSTed, signed
-- with the subscription's secret (sealed at rest with the server's key).
CREATE TABLE webhooks (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    url               TEXT NOT NULL,
    event_types       TEXT NOT NULL,
    secret_sealed     TEXT NOT NULL,
    state             TEXT NOT NULL,
    failures          INTEGER NOT NULL DEFAULT 0,
    disabled_reason   TEXT NOT NULL DEFAULT '',
    created_by        TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);

-- One row per (webhook, event): what is left to send and when; the
-- attempts are logged in webhook_attempts.
CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);

CREATE TABLE webhook_attempts (
    delivery_id   BIGINT NOT NULL,
    attempt       INTEGER NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    status_code   INTEGER NOT NULL,
    error         TEXT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
