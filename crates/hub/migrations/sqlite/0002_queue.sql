-- Issue 3: leases with fencing tokens, retries, dead letter and redrive, scheduling,
-- idempotency keys, creator limits, the dedupe ledger, creator-scoped API keys and the
-- agent registry's labels and slots. Keep this file in step with migrations/postgres.
--
-- SQLite cannot change a CHECK constraint in place, so `jobs` is rebuilt. The skeleton's
-- states map onto the new ones: assigned → leased, acked → running. A job held by an agent
-- keeps its holder; its lease (fencing token = the attempts so far) expires 120 s after its
-- last update, like any lease.

CREATE TABLE jobs_v2 (
    id                    TEXT PRIMARY KEY NOT NULL,
    job_type              TEXT NOT NULL,
    payload               TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('pending', 'leased', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    creator_id            TEXT NOT NULL,
    target_agent_id       TEXT REFERENCES agents (id),
    -- JSON array of labels an agent must all have; NULL when any agent of the creator will do.
    labels                TEXT,
    priority              INTEGER NOT NULL DEFAULT 0,
    -- Not visible to agents before this instant (schedule, or retry backoff).
    run_at                INTEGER NOT NULL,
    idempotency_key       TEXT,
    assigned_agent_id     TEXT REFERENCES agents (id),
    -- Fencing token: raised by every lease, never reset, so a late result is recognisable.
    lease_token           INTEGER NOT NULL DEFAULT 0,
    lease_expires_at      INTEGER,
    -- Deliveries since submission or the last redrive (SQS's receive count).
    attempts              INTEGER NOT NULL DEFAULT 0,
    max_receive_count     INTEGER NOT NULL DEFAULT 5,
    visibility_timeout_ms INTEGER NOT NULL DEFAULT 120000,
    cancel_requested      INTEGER NOT NULL DEFAULT 0,
    result                TEXT,
    error                 TEXT,
    error_code            TEXT,
    skipped_recipients    TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    finished_at           INTEGER
);

INSERT INTO jobs_v2 (id, job_type, payload, status, creator_id, target_agent_id, labels, priority, run_at,
                     idempotency_key, assigned_agent_id, lease_token, lease_expires_at, attempts,
                     max_receive_count, visibility_timeout_ms, cancel_requested, result, error, error_code,
                     skipped_recipients, created_at, updated_at, finished_at)
SELECT id, job_type, payload,
       CASE status WHEN 'assigned' THEN 'leased' WHEN 'acked' THEN 'running' ELSE status END,
       creator_id, target_agent_id, NULL, 0, created_at,
       NULL, assigned_agent_id, attempts,
       CASE WHEN status IN ('assigned', 'acked') THEN updated_at + 120000 END,
       attempts, 5, 120000, 0, result, error,
       CASE WHEN error IS NOT NULL AND json_valid(error) THEN json_extract(error, '$.code') END,
       NULL, created_at, updated_at,
       CASE WHEN status IN ('succeeded', 'failed') THEN updated_at END
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;

CREATE INDEX jobs_ready ON jobs (status, creator_id, priority DESC, run_at);
CREATE INDEX jobs_by_target ON jobs (target_agent_id, status);
CREATE INDEX jobs_by_holder ON jobs (assigned_agent_id, status);
CREATE INDEX jobs_by_lease_expiry ON jobs (status, lease_expires_at);
CREATE INDEX jobs_by_finish ON jobs (status, finished_at);
CREATE INDEX jobs_by_created ON jobs (created_at, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (creator_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row per lease (and per stale result), kept until the job is purged.
CREATE TABLE job_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    lease_token INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    creator_id  TEXT NOT NULL,
    job_type    TEXT NOT NULL,
    leased_at   INTEGER NOT NULL,
    ended_at    INTEGER,
    -- NULL while held; then succeeded, failed, retry, dead, cancelled, released, expired or stale.
    outcome     TEXT,
    result      TEXT,
    error       TEXT
);
CREATE INDEX job_attempts_by_job ON job_attempts (job_id, lease_token);
CREATE INDEX job_attempts_by_rate ON job_attempts (creator_id, job_type, leased_at);

INSERT INTO job_attempts (job_id, lease_token, agent_id, creator_id, job_type, leased_at)
SELECT id, lease_token, assigned_agent_id, creator_id, job_type, updated_at
FROM jobs WHERE status IN ('leased', 'running') AND assigned_agent_id IS NOT NULL;

-- NULL creator: an operator key (all creators).
ALTER TABLE api_keys ADD COLUMN creator_id TEXT;

ALTER TABLE agents ADD COLUMN labels TEXT;
ALTER TABLE agents ADD COLUMN slots INTEGER;

CREATE TABLE creator_limits (
    creator_id     TEXT PRIMARY KEY NOT NULL,
    max_concurrent INTEGER,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE creator_type_limits (
    creator_id   TEXT NOT NULL,
    job_type     TEXT NOT NULL,
    max_per_hour INTEGER NOT NULL,
    PRIMARY KEY (creator_id, job_type)
);

-- Who a creator has messaged and when (the dedupe ledger).
CREATE TABLE recipient_ledger (
    creator_id   TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    last_sent_at INTEGER NOT NULL,
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
    dead_from     INTEGER,
    dead_to       INTEGER,
    rate_per_sec  INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    moved         INTEGER NOT NULL DEFAULT 0,
    last_step_at  INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX redrives_by_status ON redrives (status);
