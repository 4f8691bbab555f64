import * as api from "./api";
import { loadConsent, nothingGranted, setUpConsent } from "./consent";
import { describeError } from "./errors";
import { setUpSignIn } from "./signin";
import { S } from "./strings";
import type { AgentSnapshot } from "./types";
import { render, showError } from "./view";

let current: AgentSnapshot | null = null;
/** The consent screen is up (after sign-in with nothing granted, or from Permissions). */
let consentOpen = false;

function apply(snapshot: AgentSnapshot): void {
  current = snapshot;
  if (!snapshot.loggedIn) consentOpen = false;
  render(snapshot, consentOpen);
}

/** Shows the consent screen when nothing is granted yet; `force` always (Permissions). */
async function offerConsent(force: boolean): Promise<void> {
  try {
    const items = await loadConsent();
    if (force || nothingGranted(items)) consentOpen = true;
  } catch (err) {
    if (force) {
      consentOpen = true;
      showError("consent-error", describeError(err));
    }
  }
  if (current) render(current, consentOpen);
  // A new screen starts at its top (the status view may have been scrolled down).
  if (consentOpen) window.scrollTo(0, 0);
}

async function runAction(action: () => Promise<AgentSnapshot>): Promise<void> {
  showError("action-error", null);
  try {
    apply(await action());
  } catch (err) {
    showError("action-error", describeError(err));
  }
}

async function main(): Promise<void> {
  setUpSignIn((snapshot) => {
    document.getElementById("login-reason")!.hidden = true;
    apply(snapshot);
    void offerConsent(false);
  });
  setUpConsent(() => {
    consentOpen = false;
    if (current) render(current, false);
  });
  document.getElementById("open-permissions")!.textContent = S.permissions;
  document.getElementById("open-permissions")!.addEventListener("click", () => void offerConsent(true));
  document.getElementById("pause-toggle")!.addEventListener("click", () =>
    void runAction(current?.paused ? api.resume : api.pause),
  );
  document.getElementById("logout")!.addEventListener("click", () => void runAction(api.logout));

  // Listen before asking for the first snapshot so no change falls in between.
  await api.onState(apply);
  await api.onAgentEvent((event) => {
    if (event.type === "loginRequired" && typeof event.reason === "string") {
      const reason = document.getElementById("login-reason")!;
      reason.textContent = event.reason;
      reason.hidden = false;
    }
  });
  try {
    const snapshot = await api.getState();
    apply(snapshot);
    if (snapshot.loggedIn) await offerConsent(false);
  } catch (err) {
    document.getElementById("boot")!.textContent = describeError(err).summary;
  }
}

void main();
