-- The compliance audit log: one row per mutating call, chained by hash once finalised.
CREATE TABLE IF NOT EXISTS audit_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            TEXT    NOT NULL,
    client        TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    query         TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    trace_id      TEXT    NOT NULL,
    client_ip     TEXT    NOT NULL,
    request_body  TEXT    NOT NULL,
    status        INTEGER,
    outcome       TEXT    NOT NULL,
    response_body TEXT    NOT NULL,
    duration_ms   REAL,
    upstream_ms   REAL,
    seq           INTEGER UNIQUE,
    prev_hash     TEXT,
    hash          TEXT
);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_client ON audit_records (client);
CREATE INDEX IF NOT EXISTS audit_records_request_id ON audit_records (request_id);

-- Where retention pruning cut the chain: what remains verifies from here.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at    TEXT    NOT NULL,
    last_seq      INTEGER NOT NULL,
    last_hash     TEXT    NOT NULL,
    pruned_before TEXT    NOT NULL,
    pruned_count  INTEGER NOT NULL
);
