// English: every word the window shows. fr.ts must have the same keys (`Strings`), so a
// key missing there fails `tsc`. `{name}` marks a value filled in at run time.

export const en = {
  appName: "Edge Agent",
  loading: "Loading…",

  // Sign-in: the hub address, then a code to approve on the hub's page.
  loginTitle: "Connect this machine",
  hubUrlLabel: "Hub URL",
  tokenLabel: "Enrollment token",
  loginIntroDevice: "Enter your hub's address. You will get a short code to approve on the hub's page.",
  loginIntroToken: "Paste the hub address and the enrollment token you were given.",
  getCode: "Get a sign-in code",
  gettingCode: "Asking the hub…",
  useToken: "Use an enrollment token instead",
  useCode: "Sign in with a code instead",
  logIn: "Log in",
  loggingIn: "Logging in…",
  errHubUrlEmpty: "Enter the hub URL.",
  errHubUrlScheme: "The hub URL must start with http:// or https://, for example https://hub.example.com.",
  errTokenEmpty: "Enter the enrollment token.",

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

  // Errors, by the core's error code or the hub's.
  errDeviceExpired: "The code expired before it was approved. Get a new code and approve it within the time shown.",
  errDeviceDenied: "Someone chose Deny on the hub's page. If that was a mistake, get a new code and approve it.",
  errDeviceUnsupported:
    "This address answers, but not as a hub that offers sign-in by code. Check the address, or use an enrollment token instead.",
  errOpenPage: "The browser could not be opened. Type the address shown under the code into your browser.",
  errInvalidToken: "The enrollment token is unknown, already used or expired. Ask for a new one.",
  errUnauthorized: "The hub did not accept these credentials.",
  errInvalidBody: "The hub did not understand the request. The agent and the hub may be of different versions.",
  errUpgradeRequired: "The hub needs a newer version of this app.",
  errHubUnreachable: "The hub could not be reached. Check the URL and that the hub is running.",
  errInvalidHubUrl:
    "This hub URL cannot be used. Plain http:// is only allowed for this machine (localhost); use https:// otherwise.",
  errKeychain: "The system keychain could not store the login.",
  errCorruptCredentials: "The stored login is damaged. Log out and log in again.",
  errLoginRequired: "The hub no longer accepts this machine's login. Log in again.",
  errInvalidSetting: "This setting cannot be used.",
  /** `{code}` is the core's error code. */
  errUnknownCode: "Something went wrong ({code}).",
  errUnknown: "Something went wrong. See the logs for details.",

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

  // Home: one sentence, today's usage, the details.
  statusTitle: "Home",
  sentencePaused: "Paused — no new tasks until you resume",
  /** `{site}` is the site's name. */
  sentenceNeedsLogin: "Needs you: log in to {site}",
  /** `{time}` is HH:MM. */
  sentenceQuiet: "Quiet hours until {time}",
  sentenceOffline: "Offline — trying to reach your hub",
  sentenceConnecting: "Connecting to your hub…",
  sentenceNoTasks: "Connected — no tasks yet today",
  sentenceOneTask: "Connected — 1 task today",
  /** `{count}` is a number above 1. */
  sentenceTasks: "Connected — {count} tasks today",
  usageTitle: "Today",
  usageTasks: "Tasks",
  usageData: "Data",
  usageMessages: "Messages",
  /** `{count}` tasks today, `{cap}` per hour. */
  usageTasksCap: "{count} today · limit {cap} per hour",
  usageTasksNoCap: "{count} today · no limit",
  /** `{used}` and `{cap}` are amounts of data. */
  usageDataCap: "{used} of {cap}",
  usageDataNoCap: "{used} · no limit",
  usageMessagesCap: "limit {cap} per hour",
  usageNoCap: "no limit",
  usageDataMeter: "Data used today against your daily limit",
  unitB: "B",
  unitKB: "kB",
  unitMB: "MB",
  unitGB: "GB",
  detailsTitle: "Details",
  factConnection: "Connection",
  factJobs: "Jobs",
  factHub: "Hub",
  factAgent: "This computer",
  factKeychain: "Keychain",
  factBundleRoot: "Bundle root",
  factBrowser: "Browser",
  factTunnel: "Tunnel",
  factExposed: "Exposed",
  exposedLabel: "Local services the hub can reach through the tunnel",
  offline: "Offline",
  connecting: "Connecting…",
  online: "Online",
  badgePaused: "Paused",
  badgeWorking: "Working",
  jobsPaused: "Paused — no new jobs",
  jobsRunningOne: "Running a job",
  /** `{count}` is above 1. */
  jobsRunningMany: "Running {count} jobs",
  jobsAccepting: "Accepting jobs",
  rootNotReceived: "Not received yet (the hub had no bundle repository at login)",
  pauseJobs: "Pause jobs",
  resumeJobs: "Resume jobs",
  settings: "Settings",
  logOut: "Log out",
  recentJobs: "Recent jobs",
  noJobs: "No jobs yet.",
  colJob: "Job",
  colType: "Type",
  colStatus: "Status",
  colTime: "Time",
  statusRunning: "Running",
  statusSucceeded: "Succeeded",
  statusFailed: "Failed",
  /** `{until}` is replaced by a time element. */
  browserPausedUntil: "Paused until {until}",
  browserRateLimited: "a site kept rate-limiting",
  browserUnavailable: "Not available: install Chrome, Chromium or Edge",
  browserReady: "Ready",
  browserLoginsIntro: "These sites showed their logged-out page. Log in, then retry their jobs:",
  browserVolatile: "No keychain key for browser sessions: site logins last only until the agent stops.",
  /** `{site}` is the site's name. */
  logInToSite: "Log in to {site}",
  loggingInToSite: "A browser window is open: log in there…",
  tunnelOpenIdle: "Open — no traffic now",
  tunnelOpenOne: "Open — 1 connection now",
  /** `{count}` is above 1. */
  tunnelOpenMany: "Open — {count} connections now",
  tunnelConnecting: "Connecting…",
  tunnelOff: "Off (not allowed, or paused)",

  // Settings.
  settingsTitle: "Settings",
  capsTitle: "Limits",
  capsHint: "Leave a field empty for no limit of your own. Your hub can lower these limits, never raise them.",
  capJobs: "Tasks per hour",
  capMessages: "Messages per hour",
  capData: "Data per day (MB)",
  capInvalid: "Type a whole number above 0, or leave the field empty.",
  save: "Save",
  saved: "Saved",
  quietTitle: "Quiet hours",
  quietEnabled: "No tasks during these hours",
  quietFrom: "From",
  quietTo: "To",
  quietHint: "Tasks offered during quiet hours are refused; your hub offers them again later.",
  quietInvalid: "Choose two different times.",
  uploadsTitle: "Uploads folder",
  uploadsLabel: "The one folder browser tasks may upload files from",
  uploadsPlaceholder: "/home/you/Uploads",
  uploadsNone: "None: browser tasks upload only their own files.",
  clear: "Clear",
  sitesTitle: "Site logins",
  sitesHint: "A browser window opens on the site: log in there as usual. The login is kept for browser tasks.",
  sitesNone: "No site allowed yet: allow browser tasks on a site in Permissions.",
  /** `{site}` is the site's name. */
  siteLoggedIn: "Logged in to {site}.",
  startTitle: "Start and language",
  startAtLogin: "Start Edge Agent when I log in to this computer",
  languageLabel: "Language",
  languageSystem: "Same as the system",
  languageEn: "English",
  languageFr: "Français",
  openLogFolder: "Open the log folder",
  settingsDone: "Done",

  // Updates (Home).
  /** `{version}`: the version installed on disk. */
  updateReady: "Update ready — Edge Agent {version} is installed and runs from the next start.",
  updateRestartNow: "Restart now",
  updateRestartTonight: "Tonight",
  updateRestartingNow: "Restarting as soon as no task is running…",
  updateRestartingTonight: "Restarting tonight at 3:00, when no task is running.",
  /** `{version}`: the newer version offered to this computer. */
  updateAvailable:
    "Edge Agent {version} is out. Update it the way you installed it: your package manager, or the installer from your operator.",
  /** `{version}`: the newer version, a package of the kind this app was installed from. */
  updateAvailableInstallable: "Edge Agent {version} is out.",
  updateInstallNow: "Install now",
  updateInstalling: "Installing… your computer may ask for its administrator password.",
  /** `{days}`: whole days without a verified update check. */
  updatesUnreachable:
    "Edge Agent has not been able to check for updates for {days} days. Check your connection; if it lasts, tell your hub's operator.",

  // The hub's signing keys (Home, issue 20): 30 days before they expire, and once expired.
  /** `{keys}`: one of the expiryKeys* words; `{date}`: the day, in words. */
  expirySoon:
    "{keys} expire on {date}. Ask whoever runs your hub to renew its signing keys; Edge Agent picks up the new ones by itself, with nothing to reinstall.",
  /** `{effect}`: one of the expiryEffect* sentences. */
  expiryExpired:
    "{keys} expired on {date}: {effect} Ask whoever runs your hub to renew its signing keys; Edge Agent picks up the new ones by itself at its next check, with nothing to reinstall.",
  expiryKeysBundles: "Your hub's signing keys for scripts",
  expiryKeysUpdates: "Your hub's signing keys for updates",
  expiryKeysOther: "Your hub's signing keys",
  expiryEffectBundles: "signed scripts are refused until the keys are renewed.",
  expiryEffectUpdates: "updates are refused until the keys are renewed.",
  expiryEffectOther: "what depends on them is refused until the keys are renewed.",

  // Jobs screen (issue 20): the live list of tasks, and the pause lengths.
  openJobs: "Tasks",
  jobsTitle: "Tasks",
  jobsIntro: "What this computer did for your hub lately. The list follows by itself.",
  jobsNone: "No tasks yet.",
  jobsBack: "Back to Home",
  cancelJob: "Cancel",
  /** `{what}` is the task in words. */
  cancelJobLabel: "Cancel: {what}",
  jobScreenshotAlt: "Last screenshot of this task",
  /** `{time}` is the time of day. */
  jobStartedAt: "Started at {time}",
  jobEndedAt: "Ended at {time}",
  /** A task in words: `{site}` is the site's name, `{recipient}` as the site names them. */
  wordsDmRunning: "Sending a message to {recipient} on {site}",
  wordsDmDone: "Sent a message to {recipient} on {site}",
  /** `{total}` recipients. */
  wordsBroadcast: "Broadcast to {total} fans on {site}",
  wordsBroadcastProgress: "Broadcast to {total} fans on {site}: {done}/{total} sent",
  wordsPost: "Scheduled post on {site}",
  wordsScrape: "Subscriber list of {site}",
  wordsDryRun: "Trial run: nothing is sent.",
  /** Progress of a task that reports it: `{done}` of `{total}`. */
  progressLabel: "{done} of {total} done",
  kindHttpRequest: "Web request",
  kindBundle: "Signed script",
  kindSendDm: "Message",
  kindBroadcastDm: "Message to several fans",
  kindSchedulePost: "Scheduled post",
  kindScrapeSubs: "Subscriber list",
  /** `{type}` is the task type's technical name. */
  kindOther: "Task {type}",
  // A failed task in words, with what to do next, by the protocol's error code.
  jobErrNetwork: "The site could not be reached. Check this computer's internet connection; your hub tries again later.",
  jobErrNavTimeout: "The site took too long to answer. Your hub tries again later.",
  jobErrRateLimited: "The site asked to slow down. Tasks on it wait a while, then go on by themselves.",
  jobErrLoginRequired: "The site shows its logged-out page. Log in to it from Home; your hub can then try again.",
  jobErrContentBlocked: "The site refused the content. Check the message or its files with whoever sent the task.",
  jobErrPolicyViolation: "This task asked for something your settings do not allow. Nothing was done.",
  jobErrPaused: "Refused while paused or in quiet hours. Your hub offers it again later.",
  jobErrUnsupported: "This version of Edge Agent does not know this kind of task. Update Edge Agent.",
  jobErrBadPayload: "The task was malformed. Tell whoever runs your hub.",
  jobErrCancelled: "Cancelled. Your hub was told.",
  jobErrInternal: "Edge Agent failed on this task. Open the log folder from Settings for the details.",
  jobErrNotGranted: "You have not allowed this kind of task. Allow it in Permissions if you want it to run.",
  jobErrEgressDenied: "Your settings keep tasks away from this address. Nothing was sent there.",
  jobErrEgressCap: "Today's data cap is reached. Tasks go on tomorrow, or raise the cap in Settings.",
  jobErrSendUncertain: "The message may or may not have gone out, so it will not be sent again. Check on the site.",
  /** `{code}` is the protocol's error code. */
  jobErrOther: "The task failed ({code}).",
  errJobNotRunning: "This task is not running any more: there is nothing to cancel.",
  pauseMore: "Pause for…",
  pauseHour: "Pause for 1 hour",
  pauseTomorrow: "Pause until tomorrow 8:00",
  pauseUntilResumed: "Pause until I resume",
  /** `{time}` is when the pause ends. */
  sentencePausedUntil: "Paused until {time}",
  // Several accounts: the bar above every screen, the Home button for all of them.
  accountLabel: "Account",
  /** An account before it is signed in. */
  accountNew: "New account (not signed in)",
  /** `{account}` is "creator · hub". */
  accountPaused: "{account} (paused)",
  accountsTitle: "Accounts",
  accountsHint: "Add another hub or creator to this app. Each account has its own permissions, caps and tasks; choose the one shown at the top of the window or from the tray menu.",
  addAccount: "Add an account",
  removeAccount: "Remove this account",
  removeAccountConfirm: "Remove this account from this computer? It is signed out here and its settings are deleted. The hub keeps its tasks.",
  removeAccountYes: "Remove",
  removeAccountNo: "Keep it",
  pauseAll: "Pause all accounts",
  resumeAll: "Resume all accounts",
  errUnknownAccount: "This account is no longer in the app. Pick one from the list.",
  errMainAccountStays: "The first account cannot be removed, only signed out.",
  errTooManyAccounts: "This app already holds 8 accounts. Remove one before adding another.",
  errUpdateBusy: "A task is running. Updates never start in the middle of a task: try again when it has finished.",
  errUpdateRefused:
    "The update failed a safety check, so nothing was installed. Tell your hub's operator; the details say which check.",
  errUpdateFailed: "The update could not be installed, and nothing changed. The details say why.",
} as const;

/** The catalogue's shape: every key, each a string. */
export type Strings = { readonly [K in keyof typeof en]: string };
