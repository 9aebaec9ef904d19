CREATE TABLE executions (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    job_name        TEXT NOT NULL,
    job_version     INTEGER NOT NULL,
    snapshot        TEXT NOT NULL,
    status          TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    -- Number of events written for this execution; bumped in every
    -- transaction that writes one, which also serialises them.
    event_seq       INTEGER NOT NULL DEFAULT 0,
    created_at      TIMESTAMP NOT NULL,
    started_at      TIMESTAMP NULL,
    finished_at     TIMESTAMP NULL
);
CREATE INDEX executions_job ON executions (job_id, created_at);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    execution_id      TEXT NOT NULL REFERENCES executions (id),
    agent_id          TEXT NOT NULL,
    agent_name        TEXT NOT NULL,
    status            TEXT NOT NULL,
    error             TEXT NOT NULL DEFAULT '',
    lease_generation  INTEGER NOT NULL DEFAULT 0,
    lease_expires_at  TIMESTAMP NULL,
    output_limit      INTEGER NOT NULL,
    output_bytes      INTEGER NOT NULL DEFAULT 0,
    output_chunks     INTEGER NOT NULL DEFAULT 0,
    output_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMP NOT NULL,
    started_at        TIMESTAMP NULL,
    finished_at       TIMESTAMP NULL
);
CREATE INDEX tasks_queue ON tasks (agent_id, status, created_at);
CREATE INDEX tasks_execution ON tasks (execution_id);
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);

CREATE TABLE action_results (
    task_id      TEXT NOT NULL REFERENCES tasks (id),
    idx          INTEGER NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    exit_code    INTEGER NOT NULL,
    error        TEXT NOT NULL,
    started_at   TIMESTAMP NULL,
    finished_at  TIMESTAMP NULL,
    PRIMARY KEY (task_id, idx)
);

CREATE TABLE task_output (
    task_id       TEXT NOT NULL REFERENCES tasks (id),
    chunk         INTEGER NOT NULL,
    action_index  INTEGER NOT NULL,
    stream        TEXT NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (task_id, chunk)
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
