-- Blackout windows: the definition as protobuf JSON
-- (opsconductor.v1.BlackoutWindow).
CREATE TABLE blackouts (
    id          TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
