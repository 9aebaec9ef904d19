-- Records up to floor_seq were exported and deleted by the retention
-- policy; floor_hash is the last one's hash, which the first kept record
-- carries as its prev_hash. The Merkle tree keeps their hashes, so older
-- checkpoints still verify.
ALTER TABLE audit_head ADD COLUMN floor_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN floor_hash TEXT NOT NULL DEFAULT '';
