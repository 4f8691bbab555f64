// The consent screen: each capability in plain words, off until ticked; a tick or untick
// goes straight to the core (grant_capability / revoke_capability), whose answer is the
// new list.
import * as api from "./api";
import { describeError } from "./errors";
import { S, fill } from "./i18n";
import type { ConsentItem } from "./types";
import { validSite } from "./validate";
import { showError, showMessage } from "./view";

const BROWSER_PREFIX = "browser:";

/** Sites the person typed in this session but has not ticked yet. */
const pendingSites = new Set<string>();

function words(name: string): { title: string; what: string } {
  if (name === "http_request") return { title: S.consentHttpTitle, what: S.consentHttpWhat };
  if (name === "bundle") return { title: S.consentBundleTitle, what: S.consentBundleWhat };
  if (name === "tunnel") return { title: S.consentTunnelTitle, what: S.consentTunnelWhat };
  if (name.startsWith(BROWSER_PREFIX)) {
    const site = name.slice(BROWSER_PREFIX.length);
    return { title: fill(S.consentBrowserTitle, { site }), what: fill(S.consentBrowserWhat, { site }) };
  }
  // A capability a newer core knows and this window does not: its own name.
  return { title: name, what: "" };
}

function row(item: ConsentItem, index: number): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.capability = item.name;
  const id = `capability-${index}`;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.id = id;
  box.checked = item.granted;
  box.dataset.capability = item.name;
  const { title, what } = words(item.name);
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = title;
  const head = document.createElement("div");
  head.className = "consent-head";
  head.append(box, label);
  li.append(head);
  const describedBy: string[] = [];
  if (what) {
    const p = document.createElement("p");
    p.className = "consent-what muted";
    p.id = `${id}-what`;
    p.textContent = what;
    describedBy.push(p.id);
    li.append(p);
  }
  if (item.outdated) {
    const p = document.createElement("p");
    p.className = "notice consent-outdated";
    p.id = `${id}-outdated`;
    p.textContent = S.consentOutdated;
    describedBy.push(p.id);
    li.append(p);
  }
  if (describedBy.length) box.setAttribute("aria-describedby", describedBy.join(" "));
  // What the grant records, word for word: the person can read what they agree to.
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = S.consentDetails;
  const text = document.createElement("p");
  text.className = "consent-text";
  text.textContent = item.text;
  details.append(summary, text);
  li.append(details);
  box.addEventListener("change", () => void toggle(box, item.name));
  return li;
}

let current: ConsentItem[] = [];

/** The list again in the current language (after a language switch). */
export function relabelConsent(): void {
  renderConsent(current);
}

export function renderConsent(items: ConsentItem[]): void {
  current = items;
  for (const item of items) pendingSites.delete(item.name);
  const shown = [
    ...items,
    // A typed site stays on the list, unticked, until the person ticks it.
    ...[...pendingSites].map((name) => ({ name, granted: false, outdated: false, text: "" })),
  ];
  document.getElementById("consent-list")!.replaceChildren(...shown.map(row));
}

async function toggle(box: HTMLInputElement, name: string): Promise<void> {
  showError("consent-error", null);
  box.disabled = true;
  try {
    renderConsent(await (box.checked ? api.grantCapability(name) : api.revokeCapability(name)));
    // The list was drawn anew: keep the keyboard where the person was.
    document.querySelector<HTMLInputElement>(`#consent-list input[data-capability="${CSS.escape(name)}"]`)?.focus();
  } catch (err) {
    box.checked = !box.checked;
    box.disabled = false;
    showError("consent-error", describeError(err));
  }
}

/** Whether nothing at all is granted (the consent screen is then shown after sign-in). */
export function nothingGranted(items: ConsentItem[]): boolean {
  return !items.some((item) => item.granted);
}

export async function loadConsent(): Promise<ConsentItem[]> {
  const items = await api.getConsent();
  renderConsent(items);
  return items;
}

export function setUpConsent(onDone: () => void): void {
  document.getElementById("consent-done")!.addEventListener("click", onDone);
  const site = document.getElementById("site-name") as HTMLInputElement;
  document.getElementById("site-form")!.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = site.value.trim();
    if (!validSite(name)) {
      site.setAttribute("aria-invalid", "true");
      showMessage("site-name-error", S.addSiteInvalid);
      return;
    }
    site.setAttribute("aria-invalid", "false");
    showMessage("site-name-error", null);
    site.value = "";
    const capability = `${BROWSER_PREFIX}${name}`;
    if (!current.some((item) => item.name === capability)) pendingSites.add(capability);
    renderConsent(current);
    document.querySelector<HTMLInputElement>(`#consent-list li[data-capability="${CSS.escape(capability)}"] input`)?.focus();
  });
  site.addEventListener("input", () => {
    site.setAttribute("aria-invalid", "false");
    showMessage("site-name-error", null);
  });
}
