-- Agents authenticate with a key pair they made themselves; the control
-- plane keeps only public keys. The old credential hash stays unused.
ALTER TABLE agents ADD COLUMN public_key TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN previous_public_key TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN previous_key_expires_at TIMESTAMP NULL;
ALTER TABLE agents ADD COLUMN token_labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN revoked_at TIMESTAMP NULL;
ALTER TABLE join_tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
