// Several accounts: the bar above every screen once there are two (which account the window
// shows, remove an added one), Settings' "Add an account" and Home's "Pause all accounts".
// Each account is its own agent in the core; switching only changes which one the window
// and the tray act on.
import * as api from "./api";
import { describeError } from "./errors";
import { S, fill } from "./i18n";
import type { AccountView, AgentSnapshot } from "./types";
import { byId, showError } from "./view";

/** The first account: the app's own profile, never removed. */
const MAIN = "main";
/** As src-tauri's `accounts::MAX_ACCOUNTS`. */
const MAX_ACCOUNTS = 8;

let accounts: AccountView[] = [];


function hubHost(url: string | null): string {
  if (!url) return "";
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** "creator · hub" in words, paused said, a signed-out account as new. */
export function accountName(account: AccountView): string {
  if (!account.loggedIn || !account.creatorId) return S.accountNew;
  const host = hubHost(account.hubUrl);
  const name = host ? `${account.creatorId} · ${host}` : account.creatorId;
  return account.paused ? fill(S.accountPaused, { account: name }) : name;
}

/** The account the window shows, once the list is known. */
export function activeAccountId(): string | null {
  return accounts.find((a) => a.active)?.id ?? null;
}

export function renderAccounts(next: AccountView[]): void {
  accounts = next;
  const active = next.find((a) => a.active);
  const bar = byId("account-bar");
  // One account has nothing to choose: the window stays as simple as it was.
  bar.hidden = next.length < 2;
  const select = byId<HTMLSelectElement>("account-select");
  const focused = document.activeElement === select;
  select.replaceChildren(
    ...next.map((account) => {
      const option = document.createElement("option");
      option.value = account.id;
      option.textContent = accountName(account);
      option.selected = account.active;
      return option;
    }),
  );
  if (focused) select.focus();
  const removable = !!active && active.id !== MAIN;
  byId("account-remove").hidden = !removable;
  if (!removable) byId("account-remove-confirm").hidden = true;
  byId<HTMLButtonElement>("account-add").disabled = next.length >= MAX_ACCOUNTS;

  const pauseAll = byId<HTMLButtonElement>("pause-all");
  const signedIn = next.filter((a) => a.loggedIn);
  pauseAll.hidden = next.length < 2 || signedIn.length === 0;
  const allPaused = signedIn.length > 0 && signedIn.every((a) => a.paused);
  pauseAll.textContent = allPaused ? S.resumeAll : S.pauseAll;
  pauseAll.dataset.action = allPaused ? "resume" : "pause";
}

/** Labels again in the current language. */
export function relabelAccounts(): void {
  renderAccounts(accounts);
}

export interface AccountHandlers {
  /** Another account is shown: its snapshot, drawn from its Home (or its sign-in). */
  shown: (snapshot: AgentSnapshot) => void;
}

/** A switch, an addition or a removal; the new list follows as the core's accounts event. */
async function act(action: () => Promise<AgentSnapshot>, handlers: AccountHandlers): Promise<void> {
  showError("account-error", null);
  try {
    handlers.shown(await action());
  } catch (err) {
    showError("account-error", describeError(err));
    // The select goes back to the account really shown: the choice did not happen.
    renderAccounts(accounts);
  }
}

export function setUpAccounts(handlers: AccountHandlers): void {
  const select = byId<HTMLSelectElement>("account-select");
  select.addEventListener("change", () => void act(() => api.switchAccount(select.value), handlers));
  byId("account-add").addEventListener("click", () => void act(api.addAccount, handlers));
  byId("account-remove").addEventListener("click", () => {
    byId("account-remove-confirm").hidden = false;
    byId("account-remove-no").focus();
  });
  byId("account-remove-no").addEventListener("click", () => {
    byId("account-remove-confirm").hidden = true;
    byId("account-remove").focus();
  });
  byId("account-remove-yes").addEventListener("click", () => {
    byId("account-remove-confirm").hidden = true;
    const active = accounts.find((a) => a.active);
    if (active) void act(() => api.removeAccount(active.id), handlers);
  });
  byId("pause-all").addEventListener("click", async (event) => {
    const resume = (event.currentTarget as HTMLElement).dataset.action === "resume";
    showError("action-error", null);
    try {
      renderAccounts(await (resume ? api.resumeAll() : api.pauseAll()));
    } catch (err) {
      showError("action-error", describeError(err));
    }
  });
}

/** The accounts at start; an older tray without accounts leaves the bar hidden. */
export async function loadAccounts(): Promise<void> {
  try {
    renderAccounts(await api.listAccounts());
  } catch {
    renderAccounts([]);
  }
}
