-- Each job state change rewrote every index that starts with `status` (five of them), though
-- each query reads only the states it names. Partial indexes hold only the rows their queries
-- read, so a state change touches an index only when the job enters or leaves its states:
-- a lease, an ack and a result now rewrite three to four index entries each instead of ten.
-- Queries must name the index's condition (`status = 'pending'`, `status IN ('leased',
-- 'running')`, a comparison on `finished_at`) for the planner to use it.
DROP INDEX IF EXISTS jobs_claim_order;
CREATE INDEX jobs_pending_order ON jobs (creator_id, priority DESC, run_at, created_at, id) WHERE status = 'pending';
DROP INDEX IF EXISTS jobs_by_holder;
CREATE INDEX jobs_held_by ON jobs (assigned_agent_id) WHERE status IN ('leased', 'running');
DROP INDEX IF EXISTS jobs_by_lease_expiry;
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE status IN ('leased', 'running');
DROP INDEX IF EXISTS jobs_by_finish;
CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS jobs_by_target;
CREATE INDEX jobs_targeted ON jobs (target_agent_id, status) WHERE target_agent_id IS NOT NULL;
