// Mirrors the core's serde output (`edge_agent::AgentSnapshot`, camelCase). Keep in step
// with crates/agent; the window only reads these fields.

export type Connection = "offline" | "connecting" | "online";
export type JobStatus = "running" | "succeeded" | "failed";

export interface JobSummary {
  id: string;
  jobType: string;
  status: JobStatus;
  startedAt: string;
  finishedAt?: string | null;
  errorCode?: string | null;
  message?: string | null;
}

export interface AgentSnapshot {
  loggedIn: boolean;
  hubUrl?: string | null;
  agentId?: string | null;
  creatorId?: string | null;
  connection: Connection;
  paused: boolean;
  /** Jobs accepted and not yet finished. */
  busy: number;
  lastError?: string | null;
  keychainBackend?: string | null;
  /** SHA-256 of the hub's bundle root (TUF `root.json`) received at enrollment; compare it
   * with `edge-hub bundle root fingerprint` on the hub. */
  rootFingerprint?: string | null;
  recentJobs: JobSummary[];
}

/** What a rejected command carries (the tray's `CommandError`, serialized). */
export interface CommandError {
  code: string;
  message: string;
  /** The hub's own error code when the hub refused (`code` is then `hub_rejected`). */
  hubError?: string;
}

/** Payload of `agent://event`: the core's event, tagged by `type`. */
export interface AgentEventPayload {
  type: string;
  [key: string]: unknown;
}
