import type { Described } from "./errors";
import type { AgentSnapshot, BrowserStatus, Connection, JobStatus, JobSummary, TunnelStatus } from "./types";

// How many job rows the window shows; the core keeps its own bounded list.
const MAX_ROWS = 10;

const CONNECTION_TEXT: Record<Connection, string> = {
  offline: "Offline",
  connecting: "Connecting…",
  online: "Online",
};

const STATUS_TEXT: Record<JobStatus, string> = {
  running: "Running",
  succeeded: "Succeeded",
  failed: "Failed",
};

function byId<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id} in index.html`);
  return el as T;
}

function setText(id: string, text: string): void {
  const el = byId(id);
  if (el.textContent !== text) el.textContent = text;
}

export function showMessage(id: string, text: string | null | undefined): void {
  const el = byId(id);
  el.textContent = text ?? "";
  el.hidden = !text;
}

/** An error sentence with the core's wording underneath, smaller, when there is one. */
export function showError(id: string, error: Described | null): void {
  const el = byId(id);
  if (!error) {
    el.replaceChildren();
    el.hidden = true;
    return;
  }
  const summary = document.createElement("span");
  summary.className = "error-summary";
  summary.textContent = error.summary;
  el.replaceChildren(summary);
  if (error.detail) {
    const detail = document.createElement("small");
    detail.className = "error-detail";
    detail.textContent = error.detail;
    el.append(detail);
  }
  el.hidden = false;
}

function formatTime(iso: string | null | undefined): string {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function jobRow(job: JobSummary): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.dataset.jobId = job.id;
  row.dataset.status = job.status;

  const id = document.createElement("td");
  id.className = "mono";
  id.title = job.id;
  // Ids are `job_` + hex: the prefix says nothing here, the full id is in the tooltip.
  const bare = job.id.replace(/^job_/, "");
  id.textContent = bare.length > 8 ? `${bare.slice(0, 8)}…` : bare;

  const type = document.createElement("td");
  type.textContent = job.jobType;

  const status = document.createElement("td");
  const pill = document.createElement("span");
  pill.className = `pill pill-${job.status}`;
  pill.textContent = STATUS_TEXT[job.status] ?? job.status;
  status.append(pill);
  if (job.status === "failed" && (job.message || job.errorCode)) {
    const why = document.createElement("span");
    why.className = "job-error";
    why.textContent = job.message || job.errorCode || "";
    status.append(why);
  }

  const finished = document.createElement("td");
  finished.textContent = job.status === "running" ? formatTime(job.startedAt) : formatTime(job.finishedAt);

  row.append(id, type, status, finished);
  return row;
}

// The circuit breaker's reasons in words; an unknown one is shown as the core sent it.
const CIRCUIT_REASON_TEXT: Record<string, string> = {
  RATE_LIMITED: "a site kept rate-limiting",
};

/** An instant as the person reads it: the time today, the date too on another day. */
function formatInstant(ms: number): string {
  const date = new Date(ms);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** Browser jobs: paused by the circuit breaker, sites needing a login, volatile sessions. */
function renderBrowser(browser: BrowserStatus | null | undefined): void {
  // No runtime yet (the agent has not connected since it started): nothing to say.
  byId("browser-row").hidden = !browser;
  const state = byId("browser-state");
  if (!browser) {
    state.replaceChildren();
  } else if (browser.circuitOpenUntilMs != null) {
    // The core reports the breaker only while it is open, and sends a fresh snapshot
    // when it closes, so the window need not compare with its own clock.
    state.dataset.state = "paused";
    const until = document.createElement("time");
    until.dateTime = new Date(browser.circuitOpenUntilMs).toISOString();
    until.textContent = formatInstant(browser.circuitOpenUntilMs);
    const reason = browser.circuitReason ?? "";
    const why = CIRCUIT_REASON_TEXT[reason] ?? reason;
    state.replaceChildren("Paused until ", until, why ? ` — ${why}` : "");
    state.title = reason;
  } else if (!browser.executable) {
    state.dataset.state = "unavailable";
    state.replaceChildren("Not available: install Chrome, Chromium or Edge");
    state.title = "";
  } else {
    state.dataset.state = "ready";
    state.replaceChildren("Ready");
    state.title = browser.executable;
  }

  const sites = browser?.loginRequired ?? [];
  byId("browser-login-sites").replaceChildren(
    ...sites.map((site) => {
      const item = document.createElement("li");
      item.dataset.site = site;
      const name = document.createElement("strong");
      name.textContent = site;
      const command = document.createElement("code");
      command.textContent = `edge-agent browser login --site ${site}`;
      item.append(name, command);
      return item;
    }),
  );
  byId("browser-logins").hidden = sites.length === 0;
  byId("browser-volatile").hidden = !browser?.sessionVolatile;
}

/** The tunnel in words, and the local services the person exposed through it. */
function renderTunnel(tunnel: TunnelStatus | null | undefined): void {
  const state = byId("tunnel-state");
  const current = tunnel?.state ?? "off";
  state.dataset.state = current;
  const streams = tunnel?.streams ?? 0;
  state.textContent =
    current === "open"
      ? streams === 0
        ? "Open — no traffic now"
        : `Open — ${streams === 1 ? "1 connection" : `${streams} connections`} now`
      : current === "connecting"
        ? "Connecting…"
        : "Off (not allowed, or paused)";

  const exposed = Object.entries(tunnel?.exposed ?? {});
  byId("exposed-list").replaceChildren(
    ...exposed.map(([name, address]) => {
      const item = document.createElement("li");
      item.dataset.name = name;
      const label = document.createElement("strong");
      label.textContent = name;
      const where = document.createElement("code");
      where.textContent = address;
      item.append(label, " ", where);
      return item;
    }),
  );
  byId("exposed-row").hidden = exposed.length === 0;
}

/** Brings the whole window in line with one snapshot of the core; a logged-in window
 * shows the consent screen instead of the status when `consent` is set. */
export function render(snapshot: AgentSnapshot, consent = false): void {
  byId("boot").hidden = true;
  const badge = byId("connection-badge");
  const loginView = byId("login-view");
  const statusView = byId("status-view");
  const consentView = byId("consent-view");

  if (!snapshot.loggedIn) {
    loginView.hidden = false;
    statusView.hidden = true;
    consentView.hidden = true;
    badge.hidden = true;
    document.body.dataset.view = "login";
    return;
  }

  loginView.hidden = true;
  statusView.hidden = consent;
  consentView.hidden = !consent;
  document.body.dataset.view = consent ? "consent" : "status";

  // The badge sums up what the tray icon shows.
  const busy = snapshot.busy > 0;
  const summary: string = snapshot.paused ? "paused" : busy ? "busy" : snapshot.connection;
  badge.hidden = false;
  badge.dataset.state = summary;
  setText(
    "connection-badge",
    snapshot.paused ? "Paused" : busy ? "Working" : CONNECTION_TEXT[snapshot.connection] ?? snapshot.connection,
  );

  const connection = byId("connection-state");
  connection.dataset.state = snapshot.connection;
  setText("connection-state", CONNECTION_TEXT[snapshot.connection] ?? snapshot.connection);

  const paused = byId("paused-state");
  paused.dataset.paused = String(snapshot.paused);
  setText(
    "paused-state",
    snapshot.paused
      ? "Paused — no new jobs"
      : busy
        ? `Running ${snapshot.busy === 1 ? "a job" : `${snapshot.busy} jobs`}`
        : "Accepting jobs",
  );

  setText("hub-url-value", snapshot.hubUrl ?? "");
  setText("agent-id-value", snapshot.agentId ?? "");
  setText("keychain-value", snapshot.keychainBackend ?? "");
  // Grouped in fours so a person can compare it with the operator's, group by group.
  setText(
    "root-fingerprint-value",
    snapshot.rootFingerprint ? (snapshot.rootFingerprint.match(/.{1,4}/g) ?? []).join(" ") : "Not received yet (the hub had no bundle repository at login)",
  );
  showMessage("last-error", snapshot.lastError);
  renderBrowser(snapshot.browser);
  renderTunnel(snapshot.tunnel);

  const toggle = byId<HTMLButtonElement>("pause-toggle");
  toggle.textContent = snapshot.paused ? "Resume jobs" : "Pause jobs";
  toggle.setAttribute("aria-pressed", String(snapshot.paused));

  const jobs = snapshot.recentJobs ?? [];
  const body = byId("jobs-body");
  body.replaceChildren(...jobs.slice(0, MAX_ROWS).map(jobRow));
  byId("jobs").hidden = jobs.length === 0;
  byId("jobs-empty").hidden = jobs.length > 0;
}
