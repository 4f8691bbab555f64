-- The claim statement orders a creator's pending jobs by (priority DESC, run_at, created_at, id)
-- and takes the first that fits. With this index the database walks them in that order and
-- stops at the first match instead of sorting every pending job of the creator per claim.
CREATE INDEX jobs_claim_order ON jobs (status, creator_id, priority DESC, run_at, created_at, id);
