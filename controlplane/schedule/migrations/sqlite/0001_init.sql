-- Schedules: the definition as protobuf JSON (opsconductor.v1.Schedule,
-- without its runtime fields), with what the scheduler queries by.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    job_id        TEXT NOT NULL,
    definition    TEXT NOT NULL,
    state         TEXT NOT NULL,
    next_fire_at  TIMESTAMP NULL,
    last_fire_at  TIMESTAMP NULL,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);
CREATE INDEX schedules_job ON schedules (job_id);
CREATE INDEX schedules_due ON schedules (state, next_fire_at);

-- Every nominal fire: run, skipped or missed. The key makes a second
-- fire of one slot impossible, whichever replica tries.
CREATE TABLE schedule_executions (
    schedule_id    TEXT NOT NULL,
    scheduled_for  TIMESTAMP NOT NULL,
    fired_at       TIMESTAMP NULL,
    lateness_ms    INTEGER NOT NULL DEFAULT 0,
    execution_id   TEXT NOT NULL DEFAULT '',
    outcome        TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (schedule_id, scheduled_for)
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
