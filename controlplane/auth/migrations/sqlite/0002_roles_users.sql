-- Custom roles (the built-in ones live in code), users, and API tokens that
-- act as a user (their roles follow the user's).
CREATE TABLE roles (
    name             TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    permissions      TEXT NOT NULL,
    job_selector     TEXT NOT NULL,
    target_selector  TEXT NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL
);

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    roles       TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);

ALTER TABLE api_tokens ADD COLUMN user_name TEXT NOT NULL DEFAULT '';
