-- Signed checkpoints of the chain's head (audit.signing_key_file), one JSON line each: the
-- database's copy; the copies that count live outside it (audit.checkpoint_file, the log).
CREATE TABLE IF NOT EXISTS audit_signed_checkpoints (
    checkpoint BIGINT PRIMARY KEY,
    line       TEXT NOT NULL
);
