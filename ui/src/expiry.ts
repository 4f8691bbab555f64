// Home's notice about the hub's signing keys: 30 days before the keys the agent trusts
// expire, and once they have. The core judges the date (`snapshot.expiries`, its warning
// computed with the same rule `tough` refuses by); the window says it in words: what, the
// day, and what to do (it is the hub operator's to renew; the agent picks the new keys up
// by itself).
import { S, fill, language } from "./i18n";
import type { AgentSnapshot, Expiry } from "./types";

function el(id: string): HTMLElement {
  const found = document.getElementById(id);
  if (!found) throw new Error(`missing #${id} in index.html`);
  return found;
}

/** The day of an RFC 3339 instant on this computer, in words ("5 janvier 2027"). */
function localDate(iso: string): string {
  // The core keeps the signed metadata's precision (up to nanoseconds); a date needs none.
  const date = new Date(iso.replace(/(\.\d{3})\d+/, "$1"));
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleDateString(language(), { year: "numeric", month: "long", day: "numeric" });
}

function sentence(expiry: Expiry): string {
  const [keys, effect] =
    expiry.what === "bundleRoot"
      ? [S.expiryKeysBundles, S.expiryEffectBundles]
      : expiry.what === "releaseRoot"
        ? [S.expiryKeysUpdates, S.expiryEffectUpdates]
        : [S.expiryKeysOther, S.expiryEffectOther];
  const template = expiry.warning === "expired" ? S.expiryExpired : S.expirySoon;
  return fill(template, { keys, date: localDate(expiry.expiresAt), effect });
}

export function renderExpiries(snapshot: AgentSnapshot): void {
  const warned = (snapshot.expiries ?? []).filter((e) => e.warning === "soon" || e.warning === "expired");
  const box = el("trust-expiries");
  box.hidden = warned.length === 0;
  box.replaceChildren(
    ...warned.map((expiry) => {
      const line = document.createElement("p");
      const expired = expiry.warning === "expired";
      // Expired stops work now: an alert; soon is a notice the person can act on calmly.
      line.className = expired ? "error" : "notice";
      line.setAttribute("role", expired ? "alert" : "status");
      line.dataset.what = expiry.what;
      line.dataset.warning = expiry.warning ?? "";
      line.textContent = sentence(expiry);
      return line;
    }),
  );
}
