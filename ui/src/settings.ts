// The Settings screen: caps, quiet hours, uploads folder, site logins, start at login,
// language, the log folder. Each change goes straight to the core (one command each),
// whose answer is the whole settings as kept: the screen shows that, not what was typed.
import * as api from "./api";
import { describeError } from "./errors";
import { S, fill } from "./i18n";
import type { LanguageChoice, Settings } from "./types";
import { byId, showError, showMessage } from "./view";

const MB = 1_000_000;

export interface SettingsHooks {
  /** The language the app speaks changed: redraw everything in it. */
  languageChanged: (settings: Settings) => void;
  /** A site's "Log in" button. */
  logInToSite: (site: string) => void;
  permissions: () => void;
  done: () => void;
}


function input(id: string): HTMLInputElement {
  return byId<HTMLInputElement>(id);
}

let current: Settings | null = null;

export function renderSettings(settings: Settings): void {
  current = settings;
  const number = (id: string, value: number | null) => (input(id).value = value == null ? "" : String(value));
  number("cap-jobs", settings.caps.jobsPerHour);
  number("cap-messages", settings.caps.messagesPerHour);
  number("cap-data", settings.caps.bytesPerDay == null ? null : Math.max(1, Math.round(settings.caps.bytesPerDay / MB)));

  input("quiet-enabled").checked = settings.quietHours != null;
  input("quiet-start").value = settings.quietHours?.start.padStart(5, "0") ?? "22:00";
  input("quiet-end").value = settings.quietHours?.end.padStart(5, "0") ?? "07:00";
  quietFieldsFollowBox();

  input("uploads-dir").value = settings.uploadsDir ?? "";
  byId("uploads-current").textContent = settings.uploadsDir ? "" : S.uploadsNone;
  byId("uploads-current").hidden = settings.uploadsDir != null;

  byId("site-logins").replaceChildren(
    ...settings.sites.map((site) => {
      const item = document.createElement("li");
      item.dataset.site = site;
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.site = site;
      button.textContent = fill(S.logInToSite, { site });
      button.addEventListener("click", () => hooks?.logInToSite(site));
      item.append(button);
      return item;
    }),
  );
  byId("sites-none").hidden = settings.sites.length > 0;

  input("start-at-login").checked = settings.startAtLogin;
  byId<HTMLSelectElement>("language").value = settings.language;
}

/** The settings again in the current language (after a language switch). */
export function relabelSettings(): void {
  if (current) renderSettings(current);
}

function quietFieldsFollowBox(): void {
  const on = input("quiet-enabled").checked;
  input("quiet-start").disabled = !on;
  input("quiet-end").disabled = !on;
}

export async function loadSettings(): Promise<Settings> {
  const settings = await api.getSettings();
  renderSettings(settings);
  return settings;
}

/** A cap field: null when empty, a whole number above 0, else `undefined` (invalid). */
function cap(id: string): number | null | undefined {
  const raw = input(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  return Number.isInteger(value) && value > 0 ? value : undefined;
}

/** Runs one change; its answer is drawn, a refusal is said in `errorId`, in words. */
async function apply(errorId: string, change: () => Promise<Settings>, savedId?: string): Promise<boolean> {
  showError(errorId, null);
  if (savedId) byId(savedId).textContent = "";
  try {
    renderSettings(await change());
    if (savedId) byId(savedId).textContent = S.saved;
    return true;
  } catch (err) {
    showError(errorId, describeError(err));
    return false;
  }
}

let hooks: SettingsHooks | null = null;

export function setUpSettings(given: SettingsHooks): void {
  hooks = given;
  byId("caps-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = ["cap-jobs", "cap-messages", "cap-data"];
    const values = ids.map(cap);
    ids.forEach((id, i) => input(id).setAttribute("aria-invalid", String(values[i] === undefined)));
    if (values.some((v) => v === undefined)) {
      showMessage("caps-error", S.capInvalid);
      byId("caps-saved").textContent = "";
      input(ids[values.findIndex((v) => v === undefined)]).focus();
      return;
    }
    showMessage("caps-error", null);
    const [jobs, messages, megabytes] = values as (number | null)[];
    void apply("caps-error", () => api.saveCaps(jobs, messages, megabytes == null ? null : megabytes * MB), "caps-saved");
  });

  input("quiet-enabled").addEventListener("change", quietFieldsFollowBox);
  byId("quiet-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input("quiet-enabled").checked) {
      void apply("quiet-error", () => api.setQuietHours(null, null), "quiet-saved");
      return;
    }
    const start = input("quiet-start").value;
    const end = input("quiet-end").value;
    if (!start || !end || start === end) {
      showMessage("quiet-error", S.quietInvalid);
      byId("quiet-saved").textContent = "";
      return;
    }
    void apply("quiet-error", () => api.setQuietHours(start, end), "quiet-saved");
  });

  byId("uploads-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const path = input("uploads-dir").value.trim();
    void apply("uploads-error", () => api.setUploadsDir(path === "" ? null : path));
  });
  byId("uploads-clear").addEventListener("click", () => void apply("uploads-error", () => api.setUploadsDir(null)));

  const start = input("start-at-login");
  start.addEventListener("change", async () => {
    const wanted = start.checked;
    if (!(await apply("settings-error", () => api.setStartAtLogin(wanted)))) start.checked = !wanted;
  });

  const language = byId<HTMLSelectElement>("language");
  language.addEventListener("change", async () => {
    showError("settings-error", null);
    try {
      const settings = await api.setLanguage(language.value as LanguageChoice);
      current = settings;
      given.languageChanged(settings);
      renderSettings(settings);
      language.focus();
    } catch (err) {
      if (current) language.value = current.language;
      showError("settings-error", describeError(err));
    }
  });

  byId("open-logs").addEventListener("click", () => {
    showError("settings-error", null);
    api.openLogFolder().catch((err) => showError("settings-error", describeError(err)));
  });
  byId("settings-permissions").addEventListener("click", () => given.permissions());
  byId("settings-done").addEventListener("click", () => given.done());
}
