import { describeJobError, type Described } from "./errors";
import { S, fill, formatBytes, language } from "./i18n";
import type { AgentSnapshot, BrowserStatus, Connection, JobStatus, JobSummary, TunnelStatus, Usage } from "./types";
import { renderExpiries } from "./expiry";
import { renderUpdates } from "./updates";

// How many job rows the window shows; the core keeps its own bounded list.
const MAX_ROWS = 10;

function connectionText(connection: Connection): string {
  const text: Record<Connection, string> = { offline: S.offline, connecting: S.connecting, online: S.online };
  return text[connection] ?? connection;
}

function statusText(status: JobStatus): string {
  const text: Record<JobStatus, string> = {
    running: S.statusRunning,
    succeeded: S.statusSucceeded,
    failed: S.statusFailed,
  };
  return text[status] ?? status;
}

/** What the window does when the person asks to log in to a site (main.ts sets it). */
let onSiteLogin: (site: string) => void = () => {};

export function setSiteLogin(handler: (site: string) => void): void {
  onSiteLogin = handler;
}

/** An element of index.html by id; one missing is a bug, said by name. */
export function byId<T extends HTMLElement>(id: string): T {
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
  return date.toLocaleTimeString(language(), { hour: "2-digit", minute: "2-digit", second: "2-digit" });
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
  pill.textContent = statusText(job.status);
  status.append(pill);
  if (job.status === "failed" && (job.message || job.errorCode)) {
    const why = document.createElement("span");
    why.className = "job-error";
    why.textContent = job.message || job.errorCode || "";
    status.append(why);
  }

  const finished = document.createElement("td");
  finished.textContent = job.status === "running" ? formatTime(job.startedAt) : formatTime(job.finishedAt);

  row.setAttribute("role", "row");
  for (const cell of [id, type, status, finished]) cell.setAttribute("role", "cell");
  row.append(id, type, status, finished);
  return row;
}

// The circuit breaker's reasons in words; an unknown one is shown as the core sent it.
function circuitReasonText(reason: string): string {
  return reason === "RATE_LIMITED" ? S.browserRateLimited : reason;
}

/** An instant as the person reads it: the time today, the date too on another day. */
function formatInstant(ms: number): string {
  const date = new Date(ms);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString(language(), { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString(language(), { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
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
    const why = circuitReasonText(reason);
    const [before, after = ""] = S.browserPausedUntil.split("{until}");
    state.replaceChildren(before, until, after, why ? ` — ${why}` : "");
    state.title = reason;
  } else if (!browser.executable) {
    state.dataset.state = "unavailable";
    state.replaceChildren(S.browserUnavailable);
    state.title = "";
  } else {
    state.dataset.state = "ready";
    state.replaceChildren(S.browserReady);
    state.title = browser.executable;
  }

  const sites = browser?.loginRequired ?? [];
  byId("browser-login-sites").replaceChildren(
    ...sites.map((site) => {
      const item = document.createElement("li");
      item.dataset.site = site;
      const name = document.createElement("strong");
      name.textContent = site;
      // A button that opens the visible browser on the site, not a command to copy.
      const login = document.createElement("button");
      login.type = "button";
      login.dataset.site = site;
      login.textContent = fill(S.logInToSite, { site });
      login.addEventListener("click", () => onSiteLogin(site));
      item.append(name, " ", login);
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
        ? S.tunnelOpenIdle
        : streams === 1
          ? S.tunnelOpenOne
          : fill(S.tunnelOpenMany, { count: streams })
      : current === "connecting"
        ? S.tunnelConnecting
        : S.tunnelOff;

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

/** The screens of a logged-in window. */
export type Screen = "status" | "consent" | "settings" | "jobs";

/** What the Jobs screen's buttons do, and where screenshots come from (main.ts sets it). */
export interface JobActions {
  cancel: (id: string) => void;
  screenshot: (id: string) => Promise<string | null>;
}

let jobActions: JobActions = { cancel: () => {}, screenshot: async () => null };

export function setJobActions(actions: JobActions): void {
  jobActions = actions;
}

/** Screenshots already fetched, by job id, with when. A finished task's is final; a running
 * task may take another, so its own is asked again, at most every SCREENSHOT_EVERY_MS
 * (states come at every step of a broadcast). */
const screenshots = new Map<string, { url: string; at: number; final: boolean }>();
const SCREENSHOT_EVERY_MS = 5000;
const screenshotsAsked = new Set<string>();

/** A task's kind in words; an unknown kind by its technical name. */
function kindText(jobType: string): string {
  const kinds: Record<string, string> = {
    http_request: S.kindHttpRequest,
    bundle: S.kindBundle,
    send_dm: S.kindSendDm,
    broadcast_dm: S.kindBroadcastDm,
    schedule_post: S.kindSchedulePost,
    scrape_subs: S.kindScrapeSubs,
  };
  return kinds[jobType] ?? fill(S.kindOther, { type: jobType });
}

/** What a task does or did, in words ("Sent a message to @ann on FanDeck"), from the
 * core's neutral summary; its kind when the summary says too little. */
export function jobWords(job: JobSummary): string {
  const facts = job.summary ?? {};
  const site = facts.site;
  if (!site) return kindText(job.jobType);
  switch (job.jobType) {
    case "send_dm":
      if (!facts.recipient) return kindText(job.jobType);
      return fill(job.status === "succeeded" ? S.wordsDmDone : S.wordsDmRunning, { recipient: facts.recipient, site });
    case "broadcast_dm": {
      const total = job.progress?.total ?? facts.recipients ?? 0;
      return job.progress
        ? fill(S.wordsBroadcastProgress, { total, site, done: job.progress.done })
        : fill(S.wordsBroadcast, { total, site });
    }
    case "schedule_post":
      return fill(S.wordsPost, { site });
    case "scrape_subs":
      return fill(S.wordsScrape, { site });
    default:
      return kindText(job.jobType);
  }
}

function jobItem(job: JobSummary): HTMLLIElement {
  const item = document.createElement("li");
  item.dataset.jobId = job.id;
  item.dataset.status = job.status;

  const words = document.createElement("p");
  words.className = "job-words";
  words.textContent = jobWords(job);
  item.append(words);

  const meta = document.createElement("div");
  meta.className = "job-meta";
  const pill = document.createElement("span");
  pill.className = `pill pill-${job.status}`;
  pill.textContent = statusText(job.status);
  const when = document.createElement("span");
  when.className = "muted";
  when.title = job.id;
  when.textContent =
    job.status === "running" || !job.finishedAt
      ? fill(S.jobStartedAt, { time: formatTime(job.startedAt) })
      : fill(S.jobEndedAt, { time: formatTime(job.finishedAt) });
  meta.append(pill, when);
  if (job.status === "running") {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "job-cancel";
    cancel.dataset.jobId = job.id;
    cancel.textContent = S.cancelJob;
    cancel.setAttribute("aria-label", fill(S.cancelJobLabel, { what: words.textContent }));
    cancel.addEventListener("click", () => {
      cancel.disabled = true;
      jobActions.cancel(job.id);
    });
    meta.append(cancel);
  }
  item.append(meta);

  if (job.progress && job.progress.total > 0) {
    const row = document.createElement("div");
    row.className = "job-progress";
    const bar = document.createElement("progress");
    bar.max = job.progress.total;
    bar.value = Math.min(job.progress.done, job.progress.total);
    const label = fill(S.progressLabel, { done: job.progress.done, total: job.progress.total });
    bar.setAttribute("aria-label", label);
    const count = document.createElement("span");
    count.className = "job-progress-count";
    count.textContent = `${job.progress.done}/${job.progress.total}`;
    row.append(bar, count);
    item.append(row);
  }
  if (job.summary?.dryRun) {
    const dry = document.createElement("p");
    dry.className = "muted";
    dry.textContent = S.wordsDryRun;
    item.append(dry);
  }
  if (job.status === "failed") {
    const error = describeJobError(job.errorCode, job.message);
    const why = document.createElement("p");
    why.className = "job-error";
    why.dataset.code = job.errorCode ?? "";
    const summary = document.createElement("span");
    summary.className = "error-summary";
    summary.textContent = error.summary;
    why.append(summary);
    if (error.detail) {
      const detail = document.createElement("small");
      detail.className = "error-detail";
      detail.textContent = error.detail;
      why.append(detail);
    }
    item.append(why);
  }
  if (job.screenshot) {
    const img = document.createElement("img");
    img.className = "job-screenshot";
    img.alt = S.jobScreenshotAlt;
    img.dataset.jobId = job.id;
    const known = screenshots.get(job.id);
    if (known) img.src = known.url;
    else img.hidden = true;
    const stale = !known || (!known.final && performance.now() - known.at > SCREENSHOT_EVERY_MS);
    if ((stale || (known && !known.final && job.status !== "running")) && !screenshotsAsked.has(job.id)) {
      void loadScreenshot(job);
    }
    item.append(img);
  }
  return item;
}

/** Fetches a task's screenshot through the core (by job id: the window names no file),
 * then shows it wherever the task is drawn now. */
async function loadScreenshot(job: JobSummary): Promise<void> {
  let url: string | null = null;
  screenshotsAsked.add(job.id);
  try {
    url = await jobActions.screenshot(job.id);
  } catch {
    return;
  } finally {
    screenshotsAsked.delete(job.id);
  }
  if (!url) return;
  screenshots.set(job.id, { url, at: performance.now(), final: job.status !== "running" });
  for (const img of document.querySelectorAll<HTMLImageElement>(`img.job-screenshot[data-job-id="${CSS.escape(job.id)}"]`)) {
    img.src = url;
    img.hidden = false;
  }
}

/** The Jobs screen: every recent task, live (drawn again at every state the core sends).
 * Keyboard focus on a Cancel button stays where it was. */
function renderJobs(jobs: JobSummary[]): void {
  const focused = document.activeElement as HTMLElement | null;
  const focusedJob = focused?.classList.contains("job-cancel") ? focused.dataset.jobId : undefined;
  const highlighted = document.querySelector<HTMLElement>('#jobs-list > li[data-highlight="true"]')?.dataset.jobId;
  const list = byId("jobs-list");
  list.replaceChildren(...jobs.map(jobItem));
  byId("jobs-list-empty").hidden = jobs.length > 0;
  if (highlighted) highlightJob(highlighted, false);
  if (focusedJob) {
    list.querySelector<HTMLElement>(`button.job-cancel[data-job-id="${CSS.escape(focusedJob)}"]`)?.focus();
  }
}

/** Marks one task on the Jobs screen (a clicked notification's) and brings it into view. */
export function highlightJob(id: string, scroll = true): void {
  for (const item of document.querySelectorAll<HTMLElement>("#jobs-list > li")) {
    item.dataset.highlight = String(item.dataset.jobId === id);
    if (scroll && item.dataset.jobId === id) item.scrollIntoView({ block: "nearest" });
  }
}

/** Brings the whole window in line with one snapshot of the core; a logged-in window
 * shows `screen` (Home by default). */
export function render(snapshot: AgentSnapshot, screen: Screen = "status"): void {
  byId("boot").hidden = true;
  const badge = byId("connection-badge");
  const views: Record<Screen | "login", HTMLElement> = {
    login: byId("login-view"),
    status: byId("status-view"),
    consent: byId("consent-view"),
    settings: byId("settings-view"),
    jobs: byId("jobs-view"),
  };
  const shown = snapshot.loggedIn ? screen : "login";
  for (const [name, view] of Object.entries(views)) view.hidden = name !== shown;
  document.body.dataset.view = shown;
  if (!snapshot.loggedIn) {
    badge.hidden = true;
    return;
  }

  // The badge sums up what the tray icon shows.
  const busy = snapshot.busy > 0;
  const summary: string = snapshot.paused ? "paused" : busy ? "busy" : snapshot.connection;
  badge.hidden = false;
  badge.dataset.state = summary;
  setText(
    "connection-badge",
    snapshot.paused ? S.badgePaused : busy ? S.badgeWorking : connectionText(snapshot.connection),
  );
  renderSentence(snapshot);
  renderUpdates(snapshot);
  renderExpiries(snapshot);

  const connection = byId("connection-state");
  connection.dataset.state = snapshot.connection;
  setText("connection-state", connectionText(snapshot.connection));

  const paused = byId("paused-state");
  paused.dataset.paused = String(snapshot.paused);
  setText(
    "paused-state",
    snapshot.paused
      ? S.jobsPaused
      : busy
        ? snapshot.busy === 1
          ? S.jobsRunningOne
          : fill(S.jobsRunningMany, { count: snapshot.busy })
        : S.jobsAccepting,
  );

  setText("hub-url-value", snapshot.hubUrl ?? "");
  setText("agent-id-value", snapshot.agentId ?? "");
  setText("keychain-value", snapshot.keychainBackend ?? "");
  // Grouped in fours so a person can compare it with the operator's, group by group.
  setText(
    "root-fingerprint-value",
    snapshot.rootFingerprint ? (snapshot.rootFingerprint.match(/.{1,4}/g) ?? []).join(" ") : S.rootNotReceived,
  );
  showMessage("last-error", snapshot.lastError);
  renderBrowser(snapshot.browser);
  renderTunnel(snapshot.tunnel);

  const toggle = byId<HTMLButtonElement>("pause-toggle");
  toggle.textContent = snapshot.paused ? S.resumeJobs : S.pauseJobs;
  toggle.setAttribute("aria-pressed", String(snapshot.paused));

  const jobs = snapshot.recentJobs ?? [];
  renderJobs(jobs);
  const body = byId("jobs-body");
  body.replaceChildren(...jobs.slice(0, MAX_ROWS).map(jobRow));
  byId("jobs").hidden = jobs.length === 0;
  byId("jobs-empty").hidden = jobs.length > 0;
}

/** The one sentence at the top of Home: what matters most now, first. */
export function homeSentence(snapshot: AgentSnapshot): { text: string; state: string; site?: string } {
  const site = snapshot.browser?.loginRequired?.[0];
  if (snapshot.paused) {
    const until = snapshot.pausedUntil ? new Date(snapshot.pausedUntil).getTime() : NaN;
    return Number.isNaN(until)
      ? { text: S.sentencePaused, state: "paused" }
      : { text: fill(S.sentencePausedUntil, { time: formatInstant(until) }), state: "paused" };
  }
  if (site) return { text: fill(S.sentenceNeedsLogin, { site }), state: "needs-you", site };
  if (snapshot.quietUntil) return { text: fill(S.sentenceQuiet, { time: snapshot.quietUntil }), state: "quiet" };
  if (snapshot.connection === "offline") return { text: S.sentenceOffline, state: "offline" };
  if (snapshot.connection === "connecting") return { text: S.sentenceConnecting, state: "connecting" };
  const count = tasksToday(snapshot);
  const text =
    count === 0 ? S.sentenceNoTasks : count === 1 ? S.sentenceOneTask : fill(S.sentenceTasks, { count });
  return { text, state: "online" };
}

/** Tasks started today (UTC day, as the core counts them); 0 when its count is of another day. */
function tasksToday(snapshot: AgentSnapshot): number {
  const usage = snapshot.usage;
  if (!usage || usage.day !== new Date().toISOString().slice(0, 10)) return 0;
  return usage.jobsToday;
}

function renderSentence(snapshot: AgentSnapshot): void {
  const sentence = homeSentence(snapshot);
  const el = byId("home-sentence");
  el.dataset.state = sentence.state;
  setText("home-sentence", sentence.text);
  const login = byId<HTMLButtonElement>("home-login-site");
  byId("home-login").hidden = !sentence.site;
  if (sentence.site) {
    login.dataset.site = sentence.site;
    login.textContent = fill(S.logInToSite, { site: sentence.site });
  }
}

/** Today's usage against the person's caps (`get_usage`); tasks from the snapshot when newer. */
export function renderUsage(usage: Usage, snapshot: AgentSnapshot | null): void {
  const jobs = Math.max(usage.jobsToday, snapshot ? tasksToday(snapshot) : 0);
  const { jobsPerHour, messagesPerHour, bytesPerDay } = usage.caps;
  setText(
    "usage-tasks",
    jobsPerHour != null
      ? fill(S.usageTasksCap, { count: jobs, cap: jobsPerHour })
      : fill(S.usageTasksNoCap, { count: jobs }),
  );
  const used = formatBytes(usage.bytesToday);
  setText(
    "usage-data",
    bytesPerDay != null
      ? fill(S.usageDataCap, { used, cap: formatBytes(bytesPerDay) })
      : fill(S.usageDataNoCap, { used }),
  );
  const meter = byId<HTMLMeterElement>("usage-data-meter");
  meter.hidden = bytesPerDay == null;
  if (bytesPerDay != null) {
    meter.max = bytesPerDay;
    meter.high = bytesPerDay * 0.9;
    meter.value = Math.min(usage.bytesToday, bytesPerDay);
  }
  setText("usage-messages", messagesPerHour != null ? fill(S.usageMessagesCap, { cap: messagesPerHour }) : S.usageNoCap);
}
