-- SQLite only (PostgreSQL checks an IN list without building anything). SQLite codes a CHECK
-- of `status IN (seven values)` by building a temporary b-tree of the seven values each time
-- a statement inserts a job or changes its state: a page cache created and destroyed, with
-- its allocations and mutexes, three to four times per job in the job writer. The same
-- condition written as comparisons is checked in place. SQLite cannot change a CHECK in
-- place, so `jobs` is rebuilt with the same columns, rows and indexes.

CREATE TABLE jobs_v3 (
    id                    TEXT PRIMARY KEY NOT NULL,
    job_type              TEXT NOT NULL,
    payload               TEXT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status = 'pending' OR status = 'leased' OR status = 'running' OR status = 'succeeded'
               OR status = 'failed' OR status = 'dead' OR status = 'cancelled'),
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

INSERT INTO jobs_v3 (
    id, job_type, payload, status, creator_id, target_agent_id, labels, priority, run_at, idempotency_key,
    assigned_agent_id, lease_token, lease_expires_at, attempts, max_receive_count, visibility_timeout_ms,
    cancel_requested, result, error, error_code, skipped_recipients, created_at, updated_at, finished_at)
SELECT id, job_type, payload, status, creator_id, target_agent_id, labels, priority, run_at, idempotency_key,
    assigned_agent_id, lease_token, lease_expires_at, attempts, max_receive_count, visibility_timeout_ms,
    cancel_requested, result, error, error_code, skipped_recipients, created_at, updated_at, finished_at
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_v3 RENAME TO jobs;

CREATE INDEX jobs_by_created ON jobs (created_at, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (creator_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_pending_order ON jobs (creator_id, priority DESC, run_at, created_at, id) WHERE status = 'pending';
CREATE INDEX jobs_held_by ON jobs (assigned_agent_id) WHERE status IN ('leased', 'running');
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE status IN ('leased', 'running');
CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_targeted ON jobs (target_agent_id, status) WHERE target_agent_id IS NOT NULL;
