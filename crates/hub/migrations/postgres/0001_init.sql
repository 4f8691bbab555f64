-- The hub schema for PostgreSQL, equal to migrations/sqlite/0001 + 0002. Timestamps are
-- Unix milliseconds (BIGINT), JSON is kept as TEXT and every integer is BIGINT, so one set
-- of SQL statements (crates/hub/src/store/sql.rs) serves both engines.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE creators (
    id         TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    token_hash       TEXT PRIMARY KEY NOT NULL,
    creator_id       TEXT NOT NULL REFERENCES creators (id),
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    used_at          BIGINT,
    used_by_agent_id TEXT
);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY NOT NULL,
    creator_id        TEXT NOT NULL REFERENCES creators (id),
    public_key        TEXT NOT NULL,
    name              TEXT,
    version           TEXT,
    created_at        BIGINT NOT NULL,
    last_heartbeat_at BIGINT,
    connected_at      BIGINT,
    online            BIGINT NOT NULL DEFAULT 0,
    labels            TEXT,
    slots             BIGINT
);
CREATE INDEX agents_by_creator ON agents (creator_id);

CREATE TABLE nonces (
    nonce      TEXT PRIMARY KEY NOT NULL,
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX nonces_by_expiry ON nonces (expires_at);

CREATE TABLE api_keys (
    key_hash   TEXT PRIMARY KEY NOT NULL,
    name       TEXT,
    created_at BIGINT NOT NULL,
    creator_id TEXT
);

CREATE TABLE jobs (
    id                    TEXT PRIMARY KEY NOT NULL,
    job_type              TEXT NOT NULL,
    payload               TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('pending', 'leased', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    creator_id            TEXT NOT NULL,
    target_agent_id       TEXT REFERENCES agents (id),
    labels                TEXT,
    priority              BIGINT NOT NULL DEFAULT 0,
    run_at                BIGINT NOT NULL,
    idempotency_key       TEXT,
    assigned_agent_id     TEXT REFERENCES agents (id),
    lease_token           BIGINT NOT NULL DEFAULT 0,
    lease_expires_at      BIGINT,
    attempts              BIGINT NOT NULL DEFAULT 0,
    max_receive_count     BIGINT NOT NULL DEFAULT 5,
    visibility_timeout_ms BIGINT NOT NULL DEFAULT 120000,
    cancel_requested      BIGINT NOT NULL DEFAULT 0,
    result                TEXT,
    error                 TEXT,
    error_code            TEXT,
    skipped_recipients    TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    finished_at           BIGINT
);
CREATE INDEX jobs_ready ON jobs (status, creator_id, priority DESC, run_at);
CREATE INDEX jobs_by_target ON jobs (target_agent_id, status);
CREATE INDEX jobs_by_holder ON jobs (assigned_agent_id, status);
CREATE INDEX jobs_by_lease_expiry ON jobs (status, lease_expires_at);
CREATE INDEX jobs_by_finish ON jobs (status, finished_at);
CREATE INDEX jobs_by_created ON jobs (created_at, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (creator_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      TEXT NOT NULL,
    lease_token BIGINT NOT NULL,
    agent_id    TEXT NOT NULL,
    creator_id  TEXT NOT NULL,
    job_type    TEXT NOT NULL,
    leased_at   BIGINT NOT NULL,
    ended_at    BIGINT,
    outcome     TEXT,
    result      TEXT,
    error       TEXT
);
CREATE INDEX job_attempts_by_job ON job_attempts (job_id, lease_token);
CREATE INDEX job_attempts_by_rate ON job_attempts (creator_id, job_type, leased_at);

CREATE TABLE creator_limits (
    creator_id     TEXT PRIMARY KEY NOT NULL,
    max_concurrent BIGINT,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE creator_type_limits (
    creator_id   TEXT NOT NULL,
    job_type     TEXT NOT NULL,
    max_per_hour BIGINT NOT NULL,
    PRIMARY KEY (creator_id, job_type)
);

CREATE TABLE recipient_ledger (
    creator_id   TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    last_sent_at BIGINT NOT NULL,
    job_id       TEXT NOT NULL,
    PRIMARY KEY (creator_id, recipient)
);
CREATE INDEX recipient_ledger_by_time ON recipient_ledger (last_sent_at);

CREATE TABLE redrives (
    id            TEXT PRIMARY KEY NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'completed', 'cancelled')),
    job_type      TEXT,
    creator_id    TEXT,
    error_code    TEXT,
    dead_from     BIGINT,
    dead_to       BIGINT,
    rate_per_sec  BIGINT NOT NULL,
    total         BIGINT NOT NULL,
    moved         BIGINT NOT NULL DEFAULT 0,
    last_step_at  BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX redrives_by_status ON redrives (status);
