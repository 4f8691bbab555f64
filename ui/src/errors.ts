import { S } from "./strings";
import type { CommandError } from "./types";

// Words for the person at the window. The core's message is precise but written for
// logs and the CLI (it may name CLI commands or transport details), so known codes get a
// plain sentence and the core's message is kept as the detail line.
const HUB_ERRORS: Record<string, string> = {
  invalid_enrollment_token: "The enrollment token is unknown, already used or expired. Ask for a new one.",
  unauthorized: "The hub did not accept these credentials.",
  invalid_body: "The hub did not understand the request. The agent and the hub may be of different versions.",
  upgrade_required: "The hub needs a newer version of this app.",
};

const AGENT_ERRORS: Record<string, string> = {
  hub_unreachable: "The hub could not be reached. Check the URL and that the hub is running.",
  invalid_hub_url:
    "This hub URL cannot be used. Plain http:// is only allowed for this machine (localhost); use https:// otherwise.",
  keychain_unavailable: "The system keychain could not store the login.",
  corrupt_credentials: "The stored login is damaged. Log out and log in again.",
  login_required: "The hub no longer accepts this machine's login. Log in again.",
  device_login_expired: S.errDeviceExpired,
  device_login_denied: S.errDeviceDenied,
  device_login_unsupported: S.errDeviceUnsupported,
};

export interface Described {
  /** One sentence for the person. */
  summary: string;
  /** What the core said, when it adds something. */
  detail?: string;
}

export function isCommandError(value: unknown): value is CommandError {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as CommandError).code === "string" &&
    typeof (value as CommandError).message === "string"
  );
}

/** Turns whatever a rejected `invoke` gave us into words for the person. */
export function describeError(value: unknown): Described {
  if (isCommandError(value)) {
    const message = value.message.trim();
    const known =
      (value.code === "hub_rejected" && value.hubError ? HUB_ERRORS[value.hubError] : undefined) ??
      AGENT_ERRORS[value.code];
    if (known) return message && message !== known ? { summary: known, detail: message } : { summary: known };
    if (message !== "") return { summary: message };
    return { summary: `Something went wrong (${value.code}).` };
  }
  if (typeof value === "string" && value.trim() !== "") return { summary: value };
  if (value instanceof Error && value.message) return { summary: value.message };
  return { summary: "Something went wrong. See the logs for details." };
}
