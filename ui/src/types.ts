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
  /** How far a task that reports it got (a broadcast: recipients done of all). */
  progress?: { done: number; total: number } | null;
  /** What the task does, as data: the window says it in words from its catalogue. */
  summary?: JobFacts | null;
  /** A browser task took a screenshot; `job_screenshot` returns the last one. */
  screenshot?: boolean;
}

/** `edge_agent::state::JobSummary`. */
export interface JobFacts {
  site?: string | null;
  /** `send_dm`: who gets the message. */
  recipient?: string | null;
  /** `broadcast_dm`: how many get it. */
  recipients?: number | null;
  dryRun?: boolean;
}

/** How long to pause (`edge_agent::pause::PauseLength`). */
export type PauseLength = "untilResumed" | "oneHour" | "untilTomorrow";

export interface AgentSnapshot {
  loggedIn: boolean;
  hubUrl?: string | null;
  agentId?: string | null;
  creatorId?: string | null;
  connection: Connection;
  paused: boolean;
  /** When the pause ends by itself (RFC 3339); null while paused: when resumed. */
  pausedUntil?: string | null;
  /** Jobs accepted and not yet finished. */
  busy: number;
  lastError?: string | null;
  keychainBackend?: string | null;
  /** SHA-256 of the hub's bundle root (TUF `root.json`) received at enrollment; compare it
   * with `edge-hub bundle root fingerprint` on the hub. */
  rootFingerprint?: string | null;
  recentJobs: JobSummary[];
  /** The browser runtime; absent or null until the agent started it. */
  browser?: BrowserStatus | null;
  /** The tunnel through which the hub may route traffic out through this machine. */
  tunnel?: TunnelStatus | null;
  /** While quiet hours hold, their end (`HH:MM`, this machine's clock). */
  quietUntil?: string | null;
  /** Jobs started on `day` (UTC `YYYY-MM-DD`). */
  usage?: { day: string; jobsToday: number } | null;
  /** `edge_agent::state::UpdateStatus`. */
  updates?: UpdateStatus | null;
  /** What the agent trusts that ends on a date: the hub's signing roots. */
  expiries?: Expiry[] | null;
}

/** `edge_agent::state::Expiry`. */
export interface Expiry {
  /** `bundleRoot`, `releaseRoot`; a newer core may name others. */
  what: string;
  /** RFC 3339, possibly with up to nine fraction digits. */
  expiresAt: string;
  /** Within 30 days of the end (`soon`), or past it (`expired`); null otherwise. */
  warning?: "soon" | "expired" | null;
}

/** What the person should know about updates of the app. */
export interface UpdateStatus {
  /** Another version is installed on disk; it runs from the next start. */
  ready?: string | null;
  /** A newer version is offered; the person installs it the way they installed the app. */
  available?: string | null;
  /** `available` is a package of the kind this app was installed from: "Install now". */
  installable?: boolean;
  lastVerifiedCheck?: string | null;
  /** Whole days without a verified update check, once more than seven. */
  unreachableDays?: number | null;
}

export type TunnelState = "off" | "connecting" | "open";

/** `edge_agent::state::TunnelSnapshot`. */
export interface TunnelStatus {
  /** `off`: not granted, or paused. */
  state: TunnelState;
  /** Streams open right now. */
  streams: number;
  /** Local services the person exposed, by name: `ADDRESS:PORT`. */
  exposed?: Record<string, string>;
}

/** `edge_browser::BrowserStatus`: what the person must know about browser jobs. */
export interface BrowserStatus {
  /** The Chrome, Chromium or Edge the agent drives; null when none was found. */
  executable?: string | null;
  /** Browser jobs are paused by the circuit breaker until then (Unix ms). */
  circuitOpenUntilMs?: number | null;
  /** Why the circuit breaker opened (`RATE_LIMITED`, …). */
  circuitReason?: string | null;
  /** No keychain key: site logins are kept in memory only, until the agent stops. */
  sessionVolatile: boolean;
  /** Sites that showed their logged-out page; each needs `edge-agent browser login`. */
  loginRequired: string[];
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

/** The tray's `DeviceSignInView`: what to show while the person approves the code. */
export interface DeviceSignIn {
  hubUrl: string;
  /** `XXXX-XXXX`. */
  userCode: string;
  verificationUri: string;
  /** The approval page with the code filled in. */
  verificationUriComplete: string;
  expiresInSecs: number;
  intervalSecs: number;
  /** An `<svg>` document: the QR code of `verificationUriComplete`. */
  qrSvg: string;
}

/** The tray's `ConsentItem`: one capability and where the person stands on it. */
export interface ConsentItem {
  /** `http_request`, `bundle`, `tunnel` or `browser:SITE`. */
  name: string;
  granted: boolean;
  /** Granted under an older text: does not count until granted again. */
  outdated: boolean;
  /** The core's full consent text, recorded with a grant. */
  text: string;
}

/** The person's caps; null is no cap of their own. */
export interface Caps {
  jobsPerHour: number | null;
  messagesPerHour: number | null;
  bytesPerDay: number | null;
}

/** The tray's `UsageView`: today's usage against the caps. */
export interface Usage {
  jobsToday: number;
  bytesToday: number;
  caps: Caps;
}

export type LanguageChoice = "system" | "en" | "fr";

/** The tray's `SettingsView`. */
export interface Settings {
  caps: Caps;
  quietHours: { start: string; end: string } | null;
  uploadsDir: string | null;
  startAtLogin: boolean;
  language: LanguageChoice;
  effectiveLanguage: "en" | "fr";
  /** Sites the person allowed browser tasks on. */
  sites: string[];
}

/** One account of the app (src-tauri `accounts::AccountView`). */
export interface AccountView {
  id: string;
  active: boolean;
  loggedIn: boolean;
  hubUrl: string | null;
  creatorId: string | null;
  paused: boolean;
  connection: string;
  busy: number;
}
