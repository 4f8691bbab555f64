// Home's update notices: an update installed on disk (restart now or tonight), a newer
// version (installed from here when it is a package of the kind the app came from, else the
// way the person installed the app), and updates that could not be checked for more than
// seven days. The core decides all of them (`snapshot.updates`).
import * as api from "./api";
import { S, fill } from "./i18n";
import type { AgentSnapshot } from "./types";

/** What the person chose for the current ready version, so a redraw keeps saying it. */
let planned: { version: string; when: "now" | "tonight" } | null = null;
/** "Install now" was pressed and the core has not answered yet (a password dialog may be up). */
let installing = false;

function el<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`missing #${id} in index.html`);
  return found as T;
}

export function renderUpdates(snapshot: AgentSnapshot): void {
  const updates = snapshot.updates ?? {};
  const ready = updates.ready ?? null;
  el("update-ready").hidden = !ready;
  if (ready) {
    el("update-ready-text").textContent = fill(S.updateReady, { version: ready });
    const choice = planned?.version === ready ? planned.when : null;
    const note = el("update-restart-planned");
    note.hidden = !choice;
    note.textContent = choice === "now" ? S.updateRestartingNow : choice === "tonight" ? S.updateRestartingTonight : "";
    el<HTMLButtonElement>("update-restart-now").disabled = choice === "now";
    el<HTMLButtonElement>("update-restart-tonight").disabled = choice !== null;
  }
  // Installed already says more than offered.
  const available = !ready && updates.available ? updates.available : null;
  const offer = el("update-available");
  offer.hidden = !available;
  const installable = Boolean(available && updates.installable);
  offer.textContent = available
    ? fill(installable ? S.updateAvailableInstallable : S.updateAvailable, { version: available })
    : "";
  el("update-install").hidden = !installable;
  el<HTMLButtonElement>("update-install-now").disabled = installing;
  const progress = el("update-installing");
  progress.hidden = !installing;
  progress.textContent = installing ? S.updateInstalling : "";
  const days = updates.unreachableDays ?? null;
  const stale = el("updates-unreachable");
  stale.hidden = days == null;
  stale.textContent = days == null ? "" : fill(S.updatesUnreachable, { days });
}

/** Wires the restart buttons and "Install now"; `current` is the snapshot to redraw from. */
export function setUpUpdates(current: () => AgentSnapshot | null, onError: (err: unknown) => void): void {
  const redraw = () => {
    const snapshot = current();
    if (snapshot) renderUpdates(snapshot);
  };
  const choose = (when: "now" | "tonight") => async () => {
    const version = current()?.updates?.ready;
    if (!version) return;
    try {
      await api.restartForUpdate(when);
      planned = { version, when };
    } catch (err) {
      onError(err);
    }
    redraw();
  };
  const install = async () => {
    if (installing) return;
    installing = true;
    redraw();
    try {
      await api.installUpdate();
    } catch (err) {
      onError(err);
    } finally {
      installing = false;
      redraw();
    }
  };
  el("update-install-now").addEventListener("click", () => void install());
  el("update-restart-now").addEventListener("click", () => void choose("now")());
  el("update-restart-tonight").addEventListener("click", () => void choose("tonight")());
}
