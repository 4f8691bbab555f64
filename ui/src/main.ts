import { activeAccountId, loadAccounts, relabelAccounts, renderAccounts, setUpAccounts } from "./accounts";
import * as api from "./api";
import { loadConsent, nothingGranted, relabelConsent, setUpConsent } from "./consent";
import { describeError } from "./errors";
import { S, fill, fromLocale, setLanguage } from "./i18n";
import { loadSettings, relabelSettings, setUpSettings } from "./settings";
import { relabelSignIn, resetSignIn, setUpSignIn } from "./signin";
import { setUpUpdates } from "./updates";
import type { AccountView, AgentSnapshot, PauseLength, Usage } from "./types";
import {
  highlightJob,
  render,
  renderUsage,
  setJobActions,
  setSiteLogin,
  showError,
  showMessage,
  type Screen,
} from "./view";

let current: AgentSnapshot | null = null;
/** The logged-in screen shown: Home, the consent screen (after sign-in with nothing
 * granted, or from Permissions) or Settings. */
let screen: Screen = "status";
let usage: Usage | null = null;
/** When Home last asked for today's usage; state events come often, the meter need not. */
let usageAsked = -Infinity;
const USAGE_EVERY_MS = 2000;

function show(next: Screen): void {
  screen = next;
  if (current) render(current, screen);
  // A new screen starts at its top (Home may have been scrolled down).
  window.scrollTo(0, 0);
}

function apply(snapshot: AgentSnapshot): void {
  current = snapshot;
  if (!snapshot.loggedIn) screen = "status";
  render(snapshot, screen);
  if (snapshot.loggedIn && screen === "status") void refreshUsage(false);
}

/** Today's usage for Home, at most every USAGE_EVERY_MS unless `now`. */
async function refreshUsage(now: boolean): Promise<void> {
  if (!now && performance.now() - usageAsked < USAGE_EVERY_MS) {
    if (usage) renderUsage(usage, current);
    return;
  }
  usageAsked = performance.now();
  try {
    usage = await api.getUsage();
    renderUsage(usage, current);
  } catch {
    // An older core without usage: Home simply shows no numbers.
  }
}

/** The Jobs screen, on one task when a clicked notification names it. */
function openJobs(job: string | null): void {
  showError("jobs-error", null);
  show("jobs");
  if (job) highlightJob(job);
  else document.getElementById("jobs-view-title")?.focus();
}

/** A clicked notification asked for a task (or the Jobs screen): go there, once. */
async function takeOpenJob(): Promise<void> {
  try {
    const open = await api.takeOpenJob();
    if (open && current?.loggedIn) openJobs(open.job);
  } catch {
    // An older tray without the command: nothing was clicked.
  }
}

/** The Jobs screen's Cancel: the core ends the task and tells the hub. */
async function cancelJob(id: string): Promise<void> {
  showError("jobs-error", null);
  try {
    apply(await api.cancelJob(id));
  } catch (err) {
    showError("jobs-error", describeError(err));
    if (current) render(current, screen);
  }
}

function setPauseMenu(open: boolean): void {
  document.getElementById("pause-options")!.hidden = !open;
  document.getElementById("pause-more")!.setAttribute("aria-expanded", String(open));
}

/** Another account is shown: every screen starts again at its Home (or its sign-in),
 * with its own usage; nothing of the other account's stays on screen. */
function accountShown(): void {
  resetSignIn();
  screen = "status";
  usage = null;
  usageAsked = -Infinity;
  showError("action-error", null);
  window.scrollTo(0, 0);
}

/** The account list from the core (a switch from the tray menu comes this way too). */
function accountsChanged(list: AccountView[]): void {
  const before = activeAccountId();
  renderAccounts(list);
  if (before !== null && before !== activeAccountId()) {
    accountShown();
    if (current) apply(current);
  }
}

/** Shows the consent screen when nothing is granted yet; `force` always (Permissions). */
async function offerConsent(force: boolean): Promise<void> {
  try {
    const items = await loadConsent();
    if (force || nothingGranted(items)) show("consent");
  } catch (err) {
    if (force) {
      show("consent");
      showError("consent-error", describeError(err));
    }
  }
}

async function openSettings(): Promise<void> {
  showError("action-error", null);
  try {
    await loadSettings();
    show("settings");
    document.getElementById("settings-title")?.focus();
  } catch (err) {
    showError("action-error", describeError(err));
  }
}

async function runAction(action: () => Promise<AgentSnapshot>): Promise<void> {
  showError("action-error", null);
  try {
    apply(await action());
  } catch (err) {
    showError("action-error", describeError(err));
  }
}

/** Everything drawn by code again, in the language just chosen (static texts follow
 * `setLanguage` by themselves). */
function relabel(): void {
  relabelSignIn();
  relabelAccounts();
  relabelConsent();
  relabelSettings();
  if (current) render(current, screen);
  if (usage) renderUsage(usage, current);
}

/** A site's "Log in" button (Home or Settings): the core opens a visible browser on the
 * site's login page and keeps the session once the person is logged in. */
async function logInToSite(site: string): Promise<void> {
  const status = (text: string | null) => {
    showMessage("home-login-status", text);
    showMessage("site-login-status", text);
  };
  const buttons = document.querySelectorAll<HTMLButtonElement>(`button[data-site="${CSS.escape(site)}"]`);
  buttons.forEach((b) => (b.disabled = true));
  showError("action-error", null);
  showError("site-login-error", null);
  status(S.loggingInToSite);
  try {
    apply(await api.logInToSite(site));
    status(fill(S.siteLoggedIn, { site }));
  } catch (err) {
    status(null);
    const described = describeError(err);
    showError(screen === "settings" ? "site-login-error" : "action-error", described);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

/** The language before anything is drawn: the one the tray speaks (the person's choice
 * or the system's), else the webview's own. */
async function chooseLanguage(): Promise<void> {
  try {
    setLanguage((await api.getSettings()).effectiveLanguage);
  } catch {
    setLanguage(fromLocale(navigator.language));
  }
}

async function main(): Promise<void> {
  await chooseLanguage();
  setUpSignIn((snapshot) => {
    document.getElementById("login-reason")!.hidden = true;
    apply(snapshot);
    void offerConsent(false);
  });
  setUpConsent(() => show("status"));
  setUpAccounts({
    shown: (snapshot) => {
      accountShown();
      apply(snapshot);
    },
  });
  setUpSettings({
    languageChanged: (settings) => {
      setLanguage(settings.effectiveLanguage);
      relabel();
    },
    logInToSite: (site) => void logInToSite(site),
    permissions: () => void offerConsent(true),
    done: () => {
      show("status");
      void refreshUsage(true);
    },
  });
  setSiteLogin((site) => void logInToSite(site));
  document.getElementById("home-login-site")!.addEventListener("click", (event) => {
    const site = (event.currentTarget as HTMLElement).dataset.site;
    if (site) void logInToSite(site);
  });
  document.getElementById("open-permissions")!.addEventListener("click", () => void offerConsent(true));
  document.getElementById("open-settings")!.addEventListener("click", () => void openSettings());
  document.getElementById("pause-toggle")!.addEventListener("click", () =>
    void runAction(current?.paused ? api.resume : () => api.pause()),
  );
  document.getElementById("pause-more")!.addEventListener("click", () =>
    setPauseMenu(document.getElementById("pause-options")!.hidden),
  );
  for (const option of document.querySelectorAll<HTMLButtonElement>("[data-pause-length]")) {
    option.addEventListener("click", () => {
      setPauseMenu(false);
      void runAction(() => api.pause(option.dataset.pauseLength as PauseLength));
    });
  }
  document.getElementById("open-jobs")!.addEventListener("click", () => openJobs(null));
  document.getElementById("jobs-back")!.addEventListener("click", () => show("status"));
  setJobActions({ cancel: (id) => void cancelJob(id), screenshot: (id) => api.jobScreenshot(id) });
  document.getElementById("logout")!.addEventListener("click", () => void runAction(api.logout));
  setUpUpdates(
    () => current,
    (err) => showError("action-error", describeError(err)),
  );

  // Listen before asking for the first snapshot so no change falls in between.
  await api.onState(apply);
  await api.onAgentEvent((event) => {
    if (event.type === "loginRequired" && typeof event.reason === "string") {
      const reason = document.getElementById("login-reason")!;
      reason.textContent = event.reason;
      reason.hidden = false;
    }
  });
  await api.onOpenJob(() => void takeOpenJob());
  try {
    await api.onAccounts(accountsChanged);
  } catch {
    // An older tray without accounts.
  }
  try {
    await loadAccounts();
    const snapshot = await api.getState();
    apply(snapshot);
    if (snapshot.loggedIn) await offerConsent(false);
    await takeOpenJob();
  } catch (err) {
    document.getElementById("boot")!.textContent = describeError(err).summary;
  }
}

void main();
