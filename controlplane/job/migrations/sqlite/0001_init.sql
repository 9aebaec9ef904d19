CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);

CREATE TABLE job_labels (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX job_labels_key_value ON job_labels (key, value);

CREATE TABLE job_versions (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (job_id, version)
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
