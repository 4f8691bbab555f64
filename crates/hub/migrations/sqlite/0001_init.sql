-- Initial hub schema. Timestamps are Unix milliseconds (INTEGER) so the same columns map
-- to BIGINT in PostgreSQL; the API formats them as RFC 3339.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Creators exist implicitly: a row is written the first time an id is used.
CREATE TABLE creators (
    id         TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);

-- Only the SHA-256 of a token is kept; the token itself is shown once by the CLI.
CREATE TABLE enrollment_tokens (
    token_hash       TEXT PRIMARY KEY NOT NULL,
    creator_id       TEXT NOT NULL REFERENCES creators (id),
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    used_at          INTEGER,
    used_by_agent_id TEXT
);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY NOT NULL,
    creator_id        TEXT NOT NULL REFERENCES creators (id),
    public_key        TEXT NOT NULL,
    name              TEXT,
    version           TEXT,
    created_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER,
    connected_at      INTEGER,
    online            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX agents_by_creator ON agents (creator_id);

CREATE TABLE nonces (
    nonce      TEXT PRIMARY KEY NOT NULL,
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE INDEX nonces_by_expiry ON nonces (expires_at);

CREATE TABLE api_keys (
    key_hash   TEXT PRIMARY KEY NOT NULL,
    name       TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY NOT NULL,
    job_type          TEXT NOT NULL,
    payload           TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('pending', 'assigned', 'acked', 'succeeded', 'failed')),
    creator_id        TEXT NOT NULL,
    target_agent_id   TEXT REFERENCES agents (id),
    assigned_agent_id TEXT REFERENCES agents (id),
    attempts          INTEGER NOT NULL DEFAULT 0,
    result            TEXT,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX jobs_pending_by_creator ON jobs (status, creator_id, created_at);
CREATE INDEX jobs_by_assigned_agent ON jobs (assigned_agent_id, status);
