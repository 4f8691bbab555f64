-- Issue 18: a message whose outcome the agent cannot know (cut by a crash, no way to ask
-- the site) is recorded as uncertain: listed for the operator, not counted as sent, so the
-- dedupe cool-off does not refuse that recipient for a message they may never have got.
ALTER TABLE recipient_ledger ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0;
CREATE INDEX recipient_ledger_uncertain ON recipient_ledger (creator_id, last_sent_at) WHERE uncertain;
