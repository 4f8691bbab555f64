// Every window string added with device sign-in and the consent screen, in one place, so
// the English and French catalogues can follow from here. Older strings still live next to
// the code that shows them (view.ts, errors.ts, index.html) until the catalogues land.

export const S = {
  // Sign-in: the hub address, then a code to approve on the hub's page.
  loginIntroDevice: "Enter your hub's address. You will get a short code to approve on the hub's page.",
  loginIntroToken: "Paste the hub address and the enrollment token you were given.",
  getCode: "Get a sign-in code",
  gettingCode: "Asking the hub…",
  useToken: "Use an enrollment token instead",
  useCode: "Sign in with a code instead",
  logIn: "Log in",
  loggingIn: "Logging in…",

  deviceTitle: "Approve this computer",
  deviceIntro: "Open the approval page, check that it shows this code, and approve. This window continues by itself.",
  deviceCodeLabel: "Your code",
  copyCode: "Copy code",
  copied: "Copied",
  openApprovalPage: "Open the approval page",
  qrAlt: "QR code of the approval page",
  qrCaption: "Or scan this with your phone to approve there.",
  waiting: "Waiting for approval…",
  /** `{time}` is m:ss. */
  expiresIn: "The code expires in {time}.",
  expiredLocal: "The code has expired.",
  cancel: "Cancel",
  back: "Back",
  tryAgain: "Get a new code",

  // Device sign-in errors, by the core's error code.
  errDeviceExpired: "The code expired before it was approved. Get a new code and approve it within the time shown.",
  errDeviceDenied: "Someone chose Deny on the hub's page. If that was a mistake, get a new code and approve it.",
  errDeviceUnsupported:
    "This address answers, but not as a hub that offers sign-in by code. Check the address, or use an enrollment token instead.",
  errOpenPage: "The browser could not be opened. Type the address shown under the code into your browser.",

  // Consent.
  consentTitle: "Choose what this computer may do",
  consentIntro:
    "Nothing is allowed until you tick it. Your hub can only ask for what you allow here: it can narrow it, never widen it. You can change this at any time from Permissions.",
  consentDone: "Done",
  consentDetails: "What exactly is recorded when you allow this",
  consentOutdated: "The wording changed since you allowed this: read it again and tick it to keep allowing it.",
  consentHttpTitle: "Send web requests from your connection",
  consentHttpWhat:
    "The hub can ask this computer to fetch web pages through your internet connection; it cannot reach this computer or your home network unless you allow it.",
  consentBundleTitle: "Run signed scripts",
  consentBundleWhat:
    "The hub can run scripts signed for your hub on this computer as you; it cannot run anything unsigned, but signed scripts can reach what you can.",
  /** `{site}` is the site's name. */
  consentBrowserTitle: "Run browser tasks on {site} as you",
  consentBrowserWhat:
    "The hub can send messages, schedule posts and read subscribers on {site} in your name; it cannot act on any other site or go past your hourly limits.",
  consentTunnelTitle: "Share your connection through the tunnel",
  consentTunnelWhat:
    "The hub can route other programs' traffic out through your connection; it cannot reach this computer's own services unless you expose them.",
  addSiteLabel: "Allow browser tasks on another site",
  addSitePlaceholder: "site name, for example fanhub",
  addSite: "Add",
  addSiteInvalid: "Type the site's name as your hub gives it: letters, digits, '-', '_' or '.'.",
  permissions: "Permissions",
} as const;

/** `template` with each `{key}` replaced. */
export function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (whole, key: string) => values[key] ?? whole);
}
