// The window's language: the catalogue in use (`S`), switching it, and the static texts of
// index.html (`data-i18n*` attributes). Every word the window shows comes from en.ts/fr.ts.
import { en, type Strings } from "./en";
import { fr } from "./fr";

export type Lang = "en" | "fr";
export type { Strings };

const CATALOGUES: Record<Lang, Strings> = { en, fr };

/** The texts of the current language; switched in place, so `S.key` always reads it. */
export const S: { -readonly [K in keyof Strings]: string } = { ...en };

let current: Lang = "en";

export function language(): Lang {
  return current;
}

/** French for any French locale tag (`fr`, `fr-CA`), else English. */
export function fromLocale(tag: string | undefined | null): Lang {
  return /^fr(?:[-_]|$)/i.test(tag ?? "") ? "fr" : "en";
}

/** Switches the catalogue and rewrites the static texts; callers redraw the rest. */
export function setLanguage(lang: Lang): void {
  current = CATALOGUES[lang] ? lang : "en";
  Object.assign(S, CATALOGUES[current]);
  document.documentElement.lang = current;
  applyStatic(document);
}

function key(name: string | undefined): string | undefined {
  return name && name in S ? S[name as keyof Strings] : undefined;
}

/** `data-i18n` sets the text, `data-i18n-label` the aria-label, `data-i18n-placeholder`
 * the placeholder, `data-i18n-alt` an image's alternative text. */
export function applyStatic(root: ParentNode): void {
  for (const el of root.querySelectorAll<HTMLElement>("[data-i18n]")) {
    const text = key(el.dataset.i18n);
    if (text !== undefined) el.textContent = text;
  }
  for (const el of root.querySelectorAll<HTMLElement>("[data-i18n-label]")) {
    const text = key(el.dataset.i18nLabel);
    if (text !== undefined) el.setAttribute("aria-label", text);
  }
  for (const el of root.querySelectorAll<HTMLInputElement>("[data-i18n-placeholder]")) {
    const text = key(el.dataset.i18nPlaceholder);
    if (text !== undefined) el.placeholder = text;
  }
  for (const el of root.querySelectorAll<HTMLImageElement>("[data-i18n-alt]")) {
    const text = key(el.dataset.i18nAlt);
    if (text !== undefined) el.alt = text;
  }
}

/** `template` with each `{key}` replaced. */
export function fill(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{(\w+)\}/g, (whole, name: string) =>
    values[name] !== undefined ? String(values[name]) : whole,
  );
}

/** An amount of data in the current language's units (decimal: 1 MB = 1,000,000 bytes,
 * as the data-per-day field counts). */
export function formatBytes(bytes: number): string {
  const units = [S.unitB, S.unitKB, S.unitMB, S.unitGB];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toLocaleString(current, { maximumFractionDigits: digits })} ${units[unit]}`;
}
