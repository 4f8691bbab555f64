-- Issue 20: device sign-in (RFC 8628). One row per device code. Both codes are kept only as
-- their SHA-256, like enrollment tokens: a copy of the database cannot redeem or approve one.
-- status: pending -> approved | denied (on the hub's page) -> used (the agent redeemed the
-- approval; the agent row exists from then on, agent_id names it).
CREATE TABLE device_codes (
    device_code_hash TEXT PRIMARY KEY NOT NULL,
    user_code_hash   TEXT NOT NULL UNIQUE,
    public_key       TEXT NOT NULL,
    name             TEXT,
    version          TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'approved', 'denied', 'used')),
    creator_id       TEXT REFERENCES creators (id),
    agent_id         TEXT,
    interval_ms      INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    last_poll_at     INTEGER NOT NULL,
    decided_at       INTEGER
);
CREATE INDEX device_codes_by_expiry ON device_codes (expires_at);
