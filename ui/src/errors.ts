import { S, fill, type Strings } from "./i18n";
import type { CommandError } from "./types";

// Words for the person at the window. The core's message is precise but written for
// logs and the CLI (it may name CLI commands or transport details), so known codes get a
// plain sentence, in the window's language, and the core's message is kept as the detail.
const HUB_ERRORS: Record<string, keyof Strings> = {
  invalid_enrollment_token: "errInvalidToken",
  unauthorized: "errUnauthorized",
  invalid_body: "errInvalidBody",
  upgrade_required: "errUpgradeRequired",
};

const AGENT_ERRORS: Record<string, keyof Strings> = {
  hub_unreachable: "errHubUnreachable",
  invalid_hub_url: "errInvalidHubUrl",
  keychain_unavailable: "errKeychain",
  corrupt_credentials: "errCorruptCredentials",
  login_required: "errLoginRequired",
  device_login_expired: "errDeviceExpired",
  device_login_denied: "errDeviceDenied",
  device_login_unsupported: "errDeviceUnsupported",
  invalid_setting: "errInvalidSetting",
  job_not_running: "errJobNotRunning",
  unknown_account: "errUnknownAccount",
  main_account_stays: "errMainAccountStays",
  too_many_accounts: "errTooManyAccounts",
  update_busy: "errUpdateBusy",
  update_refused: "errUpdateRefused",
  update_failed: "errUpdateFailed",
};

// A failed task's words by the protocol's error code (`edge_protocol::ErrorCode`), each
// with what to do next.
const JOB_ERRORS: Record<string, keyof Strings> = {
  NETWORK: "jobErrNetwork",
  NAV_TIMEOUT: "jobErrNavTimeout",
  RATE_LIMITED: "jobErrRateLimited",
  LOGIN_REQUIRED: "jobErrLoginRequired",
  CONTENT_BLOCKED: "jobErrContentBlocked",
  POLICY_VIOLATION: "jobErrPolicyViolation",
  AGENT_PAUSED: "jobErrPaused",
  UNSUPPORTED_JOB: "jobErrUnsupported",
  BAD_PAYLOAD: "jobErrBadPayload",
  CANCELLED: "jobErrCancelled",
  INTERNAL: "jobErrInternal",
  CAPABILITY_NOT_GRANTED: "jobErrNotGranted",
  EGRESS_DENIED: "jobErrEgressDenied",
  EGRESS_CAP: "jobErrEgressCap",
  SEND_UNCERTAIN: "jobErrSendUncertain",
};

/** A failed task's error in words with the next step; the core's message as the detail. */
export function describeJobError(code: string | null | undefined, message: string | null | undefined): Described {
  const key = code ? JOB_ERRORS[code] : undefined;
  const summary = key ? S[key] : fill(S.jobErrOther, { code: code || "?" });
  const detail = message?.trim();
  return detail && detail !== summary ? { summary, detail } : { summary };
}

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
    const key =
      (value.code === "hub_rejected" && value.hubError ? HUB_ERRORS[value.hubError] : undefined) ??
      AGENT_ERRORS[value.code];
    const known = key ? S[key] : undefined;
    if (known) return message && message !== known ? { summary: known, detail: message } : { summary: known };
    if (message !== "") return { summary: message };
    return { summary: fill(S.errUnknownCode, { code: value.code }) };
  }
  if (typeof value === "string" && value.trim() !== "") return { summary: value };
  if (value instanceof Error && value.message) return { summary: value.message };
  return { summary: S.errUnknown };
}
