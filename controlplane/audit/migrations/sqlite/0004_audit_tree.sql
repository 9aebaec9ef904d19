-- The audit log as a Merkle tree (golang.org/x/mod/sumdb/tlog): each
-- record's chain hash is a leaf; audit_tree holds the tree's stored
-- hashes, written with the record. audit_checkpoints are signed notes of
-- the tree's head: an auditor who kept one can later check that the log
-- still extends it (it was not rewritten wholesale).
CREATE TABLE audit_tree (
    idx   BIGINT PRIMARY KEY,
    hash  TEXT NOT NULL
);

CREATE TABLE audit_checkpoints (
    size       BIGINT PRIMARY KEY,
    tree_hash  TEXT NOT NULL,
    note       TEXT NOT NULL,
    at         TIMESTAMP NOT NULL
);
