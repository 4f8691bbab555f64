import { S } from "./i18n";

// Field checks run before anything is sent to the core, so the user gets an answer
// next to the field instead of a round trip to the hub.

export interface LoginFields {
  hubUrl: string;
  /** Absent when signing in by code: only the hub URL is asked for. */
  token?: string;
}

export interface LoginErrors {
  hubUrl?: string;
  token?: string;
}

export function validateLogin(fields: LoginFields): LoginErrors {
  const errors: LoginErrors = {};
  const url = fields.hubUrl.trim();
  if (url === "") {
    errors.hubUrl = S.errHubUrlEmpty;
  } else {
    let parsed: URL | null = null;
    try {
      parsed = new URL(url);
    } catch {
      parsed = null;
    }
    if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:") || parsed.host === "") {
      errors.hubUrl = S.errHubUrlScheme;
    }
  }
  if (fields.token !== undefined && fields.token.trim() === "") {
    errors.token = S.errTokenEmpty;
  }
  return errors;
}

/** A site adapter's name, as the core accepts it after `browser:`. */
export function validSite(site: string): boolean {
  return /^[A-Za-z0-9._-]{1,64}$/.test(site);
}

export function hasErrors(errors: LoginErrors): boolean {
  return Object.keys(errors).length > 0;
}
