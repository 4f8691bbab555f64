-- Issue 19: several hub instances on one database. Each open agent tunnel is listed here with
-- the instance holding it and the address other instances reach that instance at, so a
-- proxy client on any instance can use it. `tunnel_id` tells one tunnel from its successor
-- (a reconnect to the same or another instance replaces the row; only the tunnel that wrote
-- a row removes it). `seen_at` is refreshed by the tunnel's keep-alive; readers ignore a
-- stale row, which is what is left when an instance dies without removing its rows.
CREATE TABLE tunnel_routes (
    agent_id    TEXT PRIMARY KEY NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    tunnel_id   TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    relay_url   TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL
);
CREATE INDEX tunnel_routes_by_seen ON tunnel_routes (seen_at);
