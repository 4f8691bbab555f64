// Field checks run before anything is sent to the core, so the user gets an answer
// next to the field instead of a round trip to the hub.

export interface LoginFields {
  hubUrl: string;
  token: string;
}

export interface LoginErrors {
  hubUrl?: string;
  token?: string;
}

export function validateLogin(fields: LoginFields): LoginErrors {
  const errors: LoginErrors = {};
  const url = fields.hubUrl.trim();
  if (url === "") {
    errors.hubUrl = "Enter the hub URL.";
  } else {
    let parsed: URL | null = null;
    try {
      parsed = new URL(url);
    } catch {
      parsed = null;
    }
    if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:") || parsed.host === "") {
      errors.hubUrl = "The hub URL must start with http:// or https://, for example https://hub.example.com.";
    }
  }
  if (fields.token.trim() === "") {
    errors.token = "Enter the enrollment token.";
  }
  return errors;
}

export function hasErrors(errors: LoginErrors): boolean {
  return Object.keys(errors).length > 0;
}
