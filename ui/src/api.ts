import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  AccountView,
  AgentEventPayload,
  AgentSnapshot,
  ConsentItem,
  DeviceSignIn,
  LanguageChoice,
  PauseLength,
  Settings,
  Usage,
} from "./types";

// One function per Tauri command in src-tauri/src/commands; names must match.

export const STATE_EVENT = "agent://state";
export const AGENT_EVENT = "agent://event";

export function getState(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("get_state");
}

export function login(hubUrl: string, token: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("login", { hubUrl, token });
}

export function logout(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("logout");
}

/** Without a length: until resumed. */
export function pause(length?: PauseLength): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("pause", length ? { length } : {});
}

/** Ends a running task (the hub is told); rejects with `job_not_running` otherwise. */
export function cancelJob(id: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("cancel_job", { id });
}

/** The task's last screenshot as a `data:image/png` URL, or null. */
export function jobScreenshot(id: string): Promise<string | null> {
  return invoke<string | null>("job_screenshot", { id });
}

export const OPEN_JOB_EVENT = "agent://open-job";

/** What a clicked notification asked to show: `{job}` (null: the Jobs screen), or null. */
export function takeOpenJob(): Promise<{ job: string | null } | null> {
  return invoke<{ job: string | null } | null>("take_open_job");
}

export function onOpenJob(handler: () => void): Promise<UnlistenFn> {
  return listen<unknown>(OPEN_JOB_EVENT, () => handler());
}

export function resume(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("resume");
}

/** Restarts into the installed update now, or tonight; either way only when no task runs. */
export function restartForUpdate(when: "now" | "tonight"): Promise<void> {
  return invoke<void>("restart_for_update", { when });
}

/** "Install now": the core verifies the app's own package and hands it to the package manager. */
export function installUpdate(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("install_update");
}

export function onState(handler: (snapshot: AgentSnapshot) => void): Promise<UnlistenFn> {
  return listen<AgentSnapshot>(STATE_EVENT, (event) => handler(event.payload));
}

export function onAgentEvent(handler: (event: AgentEventPayload) => void): Promise<UnlistenFn> {
  return listen<AgentEventPayload>(AGENT_EVENT, (event) => handler(event.payload));
}

export function startDeviceLogin(hubUrl: string): Promise<DeviceSignIn> {
  return invoke<DeviceSignIn>("start_device_login", { hubUrl });
}

/** Resolves once the code is approved (the fresh snapshot), or null when cancelled. */
export function finishDeviceLogin(): Promise<AgentSnapshot | null> {
  return invoke<AgentSnapshot | null>("finish_device_login");
}

export function cancelDeviceLogin(): Promise<void> {
  return invoke<void>("cancel_device_login");
}

/** Opens the pending sign-in's approval page in the person's browser. */
export function openApprovalPage(url: string): Promise<void> {
  return invoke<void>("open_approval_page", { url });
}

export function getConsent(): Promise<ConsentItem[]> {
  return invoke<ConsentItem[]>("get_consent");
}

export function grantCapability(name: string): Promise<ConsentItem[]> {
  return invoke<ConsentItem[]>("grant_capability", { name });
}

export function revokeCapability(name: string): Promise<ConsentItem[]> {
  return invoke<ConsentItem[]>("revoke_capability", { name });
}

export function getSettings(): Promise<Settings> {
  return invoke<Settings>("get_settings");
}

export function saveCaps(jobsPerHour: number | null, messagesPerHour: number | null, bytesPerDay: number | null): Promise<Settings> {
  return invoke<Settings>("save_caps", { jobsPerHour, messagesPerHour, bytesPerDay });
}

/** Null start and end: no quiet hours. */
export function setQuietHours(start: string | null, end: string | null): Promise<Settings> {
  return invoke<Settings>("set_quiet_hours", { start, end });
}

/** Null: no uploads folder. */
export function setUploadsDir(path: string | null): Promise<Settings> {
  return invoke<Settings>("set_uploads_dir", { path });
}

export function setStartAtLogin(enabled: boolean): Promise<Settings> {
  return invoke<Settings>("set_start_at_login", { enabled });
}

export function setLanguage(language: LanguageChoice): Promise<Settings> {
  return invoke<Settings>("set_language", { language });
}

export function openLogFolder(): Promise<void> {
  return invoke<void>("open_log_folder");
}

export function getUsage(): Promise<Usage> {
  return invoke<Usage>("get_usage");
}

/** Opens a visible browser on the site's login page; resolves once the login is kept. */
export function logInToSite(site: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("log_in_to_site", { site });
}

export const ACCOUNTS_EVENT = "agent://accounts";

export function listAccounts(): Promise<AccountView[]> {
  return invoke<AccountView[]>("list_accounts");
}

/** A new signed-out account, made active; answers its snapshot. */
export function addAccount(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("add_account");
}

export function switchAccount(id: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("switch_account", { id });
}

/** Signs the account out here and forgets it; answers the snapshot of the account shown next. */
export function removeAccount(id: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("remove_account", { id });
}

export function pauseAll(length?: PauseLength): Promise<AccountView[]> {
  return invoke<AccountView[]>("pause_all", length ? { length } : {});
}

export function resumeAll(): Promise<AccountView[]> {
  return invoke<AccountView[]>("resume_all");
}

export function onAccounts(handler: (accounts: AccountView[]) => void): Promise<UnlistenFn> {
  return listen<AccountView[]>(ACCOUNTS_EVENT, (event) => handler(event.payload));
}
