-- jobs_claim_order (status, creator_id, priority DESC, run_at, created_at, id) serves every
-- query jobs_ready (status, creator_id, priority DESC, run_at) did; each job state change
-- rewrote both.
DROP INDEX IF EXISTS jobs_ready;
