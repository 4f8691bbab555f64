// Every screen of the tray window in English and in French (Home with its sentence and
// today's usage, Settings, sign-in, the device code, consent), the language switch, and
// keyboard use, against the built ui/dist with Tauri's IPC mocked.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { deviceSignIn, screenshot, snapshot, windowUnderTest } from "./harness.mjs";

const HUB = "http://127.0.0.1:8787";
const TODAY = new Date().toISOString().slice(0, 10);
const online = snapshot({
  loggedIn: true,
  hubUrl: HUB,
  agentId: "0b8f6d2e-4c1a-4f3e-9a57-3d2c1b0a9f88",
  creatorId: "c1",
  connection: "online",
  usage: { day: TODAY, jobsToday: 3 },
});
const GRANTED = [{ name: "http_request", granted: true, outdated: false, text: "core text" }];

function settings(lang, overrides = {}) {
  return {
    caps: { jobsPerHour: 20, messagesPerHour: 30, bytesPerDay: 500_000_000 },
    quietHours: null,
    uploadsDir: null,
    startAtLogin: false,
    language: "system",
    effectiveLanguage: lang,
    sites: ["fanhub"],
    ...overrides,
  };
}

const USAGE = {
  jobsToday: 3,
  bytesToday: 12_345_678,
  caps: { jobsPerHour: 20, messagesPerHour: null, bytesPerDay: 500_000_000 },
};

/** A logged-in window in `lang` with something granted (so Home comes first). */
function home(lang, state = online, extra = {}) {
  return {
    state,
    commands: {
      get_settings: { resolve: settings(lang) },
      get_consent: { resolve: GRANTED },
      get_usage: { resolve: USAGE },
      ...extra,
    },
  };
}

const calls = (page, cmd) => page.evaluate((c) => window.__ipcCalls.filter((x) => x.cmd === c), cmd);
const text = (page, selector) => page.textContent(selector).then((t) => t.trim());

const open = windowUnderTest();

/** No element marked for a catalogue text is left empty: index.html and the catalogue agree. */
async function assertNoEmptyStaticText(page) {
  const empty = await page.$$eval("[data-i18n]", (els) =>
    els.filter((el) => el.textContent.trim() === "").map((el) => el.id || el.dataset.i18n),
  );
  assert.deepEqual(empty, []);
}

// --- Home ------------------------------------------------------------------------------

const SENTENCES = {
  en: {
    online: "Connected — 3 tasks today",
    one: "Connected — 1 task today",
    none: "Connected — no tasks yet today",
    paused: "Paused — no new tasks until you resume",
    quiet: "Quiet hours until 07:00",
    login: "Needs you: log in to FanDeck",
    offline: "Offline — trying to reach your hub",
    tasks: "3 today · limit 20 per hour",
    data: "12.3 MB of 500 MB",
    messages: "no limit",
    pause: "Pause jobs",
    resume: "Resume jobs",
    settings: "Settings",
  },
  fr: {
    online: "Connecté — 3 tâches aujourd'hui",
    one: "Connecté — 1 tâche aujourd'hui",
    none: "Connecté — aucune tâche aujourd'hui pour l'instant",
    paused: "En pause — aucune nouvelle tâche avant la reprise",
    quiet: "Heures calmes jusqu'à 07:00",
    login: "Action requise : connectez-vous à FanDeck",
    offline: "Hors ligne — tentative de joindre votre hub",
    tasks: "3 aujourd'hui · limite de 20 par heure",
    data: "12,3 Mo sur 500 Mo",
    messages: "sans limite",
    pause: "Mettre en pause",
    resume: "Reprendre",
    settings: "Réglages",
  },
};

for (const lang of ["en", "fr"]) {
  const words = SENTENCES[lang];

  test(`${lang}: Home says the state in one sentence and today's usage against the caps`, async () => {
    const { page, errors } = await open(home(lang));
    await page.waitForSelector("#status-view", { state: "visible" });
    assert.equal(await page.getAttribute("html", "lang"), lang);
    assert.equal(await text(page, "#home-sentence"), words.online);
    assert.equal(await page.getAttribute("#home-sentence", "role"), "status");
    await page.waitForFunction(() => document.querySelector("#usage-data").textContent !== "");
    assert.equal(await text(page, "#usage-tasks"), words.tasks);
    assert.equal(await text(page, "#usage-data"), words.data);
    assert.equal(await text(page, "#usage-messages"), words.messages);
    assert.equal(await page.isVisible("#usage-data-meter"), true);
    assert.equal(await page.getAttribute("#usage-data-meter", "value"), "12345678");
    assert.ok((await page.getAttribute("#usage-data-meter", "aria-label")).length > 10);
    assert.equal(await text(page, "#pause-toggle"), words.pause);
    assert.equal(await text(page, "#open-settings"), words.settings);
    await assertNoEmptyStaticText(page);
    await screenshot(page, `30-home-${lang}`);

    const sentence = async (state) => {
      await page.evaluate((s) => window.__emit("agent://state", s), state);
      return text(page, "#home-sentence");
    };
    assert.equal(await sentence({ ...online, usage: { day: TODAY, jobsToday: 1 } }), words.one);
    assert.equal(await sentence({ ...online, usage: { day: "2001-01-01", jobsToday: 9 } }), words.none, "another day's count");
    assert.equal(await sentence({ ...online, quietUntil: "07:00" }), words.quiet);
    assert.equal(await sentence({ ...online, connection: "offline" }), words.offline);
    const needsLogin = {
      ...online,
      quietUntil: "07:00",
      browser: { executable: "/usr/bin/chromium", sessionVolatile: false, loginRequired: ["FanDeck"] },
    };
    assert.equal(await sentence(needsLogin), words.login, "a site to log in to comes before quiet hours");
    assert.equal(await page.isVisible("#home-login-site"), true);
    await screenshot(page, `31-home-needs-you-${lang}`);
    assert.equal(await sentence({ ...needsLogin, paused: true }), words.paused, "the pause comes first");
    assert.equal(await text(page, "#pause-toggle"), words.resume);
    assert.equal(await page.isVisible("#home-login-site"), false);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("Home: the site login button opens the core's browser login and says so", async () => {
  const needsLogin = {
    ...online,
    browser: { executable: "/usr/bin/chromium", sessionVolatile: false, loginRequired: ["fanhub"] },
  };
  const { page, errors } = await open(home("en", needsLogin, { log_in_to_site: { hold: true } }));
  await page.getByRole("button", { name: "Log in to fanhub" }).first().click();
  await page.waitForFunction(() => window.__held.log_in_to_site);
  assert.deepEqual((await calls(page, "log_in_to_site"))[0].args, { site: "fanhub" });
  assert.equal(await text(page, "#home-login-status"), "A browser window is open: log in there…");
  assert.equal(await page.isDisabled("#home-login-site"), true, "one login at a time");
  await page.evaluate((s) => window.__release("log_in_to_site", { resolve: s }), online);
  await page.waitForFunction(() => document.querySelector("#home-sentence").textContent.startsWith("Connected"));
  assert.equal(await page.isVisible("#home-login"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("Home: a data cap of none shows no meter and an older core without usage shows no numbers", async () => {
  const { page, errors } = await open({
    state: online,
    commands: {
      get_settings: { resolve: settings("en") },
      get_consent: { resolve: GRANTED },
      get_usage: { resolve: { jobsToday: 0, bytesToday: 999, caps: { jobsPerHour: null, messagesPerHour: 5, bytesPerDay: null } } },
    },
  });
  await page.waitForFunction(() => document.querySelector("#usage-data").textContent !== "");
  assert.equal(await text(page, "#usage-tasks"), "3 today · no limit", "the snapshot's newer count wins");
  assert.equal(await text(page, "#usage-data"), "999 B · no limit");
  assert.equal(await text(page, "#usage-messages"), "limit 5 per hour");
  assert.equal(await page.isVisible("#usage-data-meter"), false);
  assert.deepEqual(errors, []);
  await page.close();

  const older = await open({ state: online, commands: { get_consent: { resolve: GRANTED } } });
  await older.page.waitForSelector("#status-view", { state: "visible" });
  assert.equal(await text(older.page, "#home-sentence"), "Connected — 3 tasks today");
  assert.equal(await text(older.page, "#usage-tasks"), "");
  assert.deepEqual(older.errors, []);
  await older.page.close();
});

// --- Settings --------------------------------------------------------------------------

const SETTINGS_WORDS = {
  en: { title: "Settings", jobs: "Tasks per hour", save: "Save", saved: "Saved", done: "Done", logs: "Open the log folder" },
  fr: {
    title: "Réglages",
    jobs: "Tâches par heure",
    save: "Enregistrer",
    saved: "Enregistré",
    done: "Terminé",
    logs: "Ouvrir le dossier des journaux",
  },
};

for (const lang of ["en", "fr"]) {
  const words = SETTINGS_WORDS[lang];

  test(`${lang}: Settings shows what is kept, saves caps and quiet hours through the core`, async () => {
    const kept = settings(lang, { caps: { jobsPerHour: 10, messagesPerHour: null, bytesPerDay: 200_000_000 } });
    const { page, errors } = await open(home(lang, online, {
        save_caps: { resolve: kept },
        set_quiet_hours: { resolve: settings(lang, { quietHours: { start: "22:00", end: "07:00" } }) },
        open_log_folder: { resolve: null },
      }),
    );
    await page.getByRole("button", { name: SENTENCES[lang].settings, exact: true }).click();
    await page.waitForSelector("#settings-view", { state: "visible" });
    assert.equal(await page.isVisible("#status-view"), false);
    assert.equal(await text(page, "#settings-title"), words.title);
    assert.equal(await page.inputValue("#cap-jobs"), "20");
    assert.equal(await page.inputValue("#cap-messages"), "30");
    assert.equal(await page.inputValue("#cap-data"), "500", "bytes shown as MB");
    assert.equal(await page.isChecked("#quiet-enabled"), false);
    assert.equal(await page.isDisabled("#quiet-start"), true);
    assert.deepEqual(await page.$$eval("#site-logins button", (bs) => bs.map((b) => b.dataset.site)), ["fanhub"]);
    await assertNoEmptyStaticText(page);
    // Every field has a visible label in this language.
    const unlabelled = await page.$$eval("#settings-view input, #settings-view select", (els) =>
      els.filter((el) => !el.labels?.length || el.labels[0].textContent.trim() === "").map((el) => el.id),
    );
    assert.deepEqual(unlabelled, []);
    await screenshot(page, `40-settings-${lang}`);

    // A cap that is not a whole number above 0 never reaches the core.
    await page.getByLabel(words.jobs, { exact: true }).fill("0");
    await page.locator("#caps-save").click();
    assert.equal(await page.getAttribute("#cap-jobs", "aria-invalid"), "true");
    assert.equal(await page.isVisible("#caps-error"), true);
    assert.equal((await calls(page, "save_caps")).length, 0);

    await page.getByLabel(words.jobs, { exact: true }).fill("10");
    await page.fill("#cap-messages", "");
    await page.fill("#cap-data", "200");
    await page.locator("#caps-save").click();
    await page.waitForFunction((saved) => document.querySelector("#caps-saved").textContent === saved, words.saved);
    assert.deepEqual((await calls(page, "save_caps"))[0].args, {
      jobsPerHour: 10,
      messagesPerHour: null,
      bytesPerDay: 200_000_000,
    });
    assert.equal(await page.isVisible("#caps-error"), false);

    await page.check("#quiet-enabled");
    await page.fill("#quiet-start", "22:00");
    await page.fill("#quiet-end", "22:00");
    await page.locator("#quiet-save").click();
    assert.equal(await page.isVisible("#quiet-error"), true, "the same time twice is refused here");
    await page.fill("#quiet-end", "07:00");
    await page.locator("#quiet-save").click();
    await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "set_quiet_hours"));
    assert.deepEqual((await calls(page, "set_quiet_hours"))[0].args, { start: "22:00", end: "07:00" });
    await page.waitForSelector("#quiet-enabled:checked");
    assert.equal(await page.inputValue("#quiet-start"), "22:00");

    await page.getByRole("button", { name: words.logs }).click();
    await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "open_log_folder"));
    assert.deepEqual((await calls(page, "open_log_folder"))[0].args, {}, "the window names no folder");

    await page.getByRole("button", { name: words.done, exact: true }).click();
    await page.waitForSelector("#status-view", { state: "visible" });
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("Settings: uploads folder, start at login, and refusals said in words", async () => {
  const { page, errors } = await open(home("en", online, {
      set_uploads_dir: {
        reject: { code: "invalid_setting", message: "/ is the whole disk; choose the one folder browser jobs may upload from" },
      },
      set_start_at_login: { resolve: settings("en", { startAtLogin: true }) },
    }),
  );
  await page.getByRole("button", { name: "Settings", exact: true }).click();
  await page.waitForSelector("#settings-view", { state: "visible" });
  assert.equal(await text(page, "#uploads-current"), "None: browser tasks upload only their own files.");
  await page.getByLabel("The one folder browser tasks may upload files from").fill("/");
  await page.locator("#uploads-save").click();
  await page.waitForSelector("#uploads-error", { state: "visible" });
  assert.equal(await text(page, "#uploads-error .error-summary"), "This setting cannot be used.");
  assert.match(await text(page, "#uploads-error .error-detail"), /whole disk/);
  assert.deepEqual((await calls(page, "set_uploads_dir"))[0].args, { path: "/" });

  await page.getByLabel("Start Edge Agent when I log in to this computer").check();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "set_start_at_login"));
  assert.deepEqual((await calls(page, "set_start_at_login"))[0].args, { enabled: true });
  assert.equal(await page.isChecked("#start-at-login"), true);
  assert.deepEqual(errors, []);
  await page.close();
});

test("Settings: switching to French redraws the whole window, and the choice goes to the core", async () => {
  const { page, errors } = await open(home("en", online, { set_language: { resolve: settings("fr", { language: "fr" }) } }));
  await page.getByRole("button", { name: "Settings", exact: true }).click();
  await page.waitForSelector("#settings-view", { state: "visible" });
  await page.getByLabel("Language").selectOption("fr");
  await page.waitForFunction(() => document.documentElement.lang === "fr");
  assert.deepEqual((await calls(page, "set_language"))[0].args, { language: "fr" });
  assert.equal(await text(page, "#settings-title"), "Réglages");
  assert.equal(await page.inputValue("#language"), "fr");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "language", "the keyboard stays on the list");
  await assertNoEmptyStaticText(page);
  await page.getByRole("button", { name: "Terminé", exact: true }).click();
  assert.equal(await text(page, "#home-sentence"), "Connecté — 3 tâches aujourd'hui");
  assert.equal(await text(page, "#connection-state"), "En ligne");
  assert.equal(await text(page, "#pause-toggle"), "Mettre en pause");
  assert.equal(await text(page, "#logout"), "Se déconnecter");
  await screenshot(page, "41-home-after-switch-fr");
  assert.deepEqual(errors, []);
  await page.close();
});

test("Settings is reachable and usable with the keyboard alone", async () => {
  const { page, errors } = await open(home("en"));
  await page.waitForSelector("#status-view", { state: "visible" });
  await page.focus("#pause-toggle");
  // Pause, its lengths, Tasks, then Settings.
  for (const next of ["pause-more", "open-jobs", "open-settings"]) {
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement?.id), next);
  }
  await page.keyboard.press("Enter");
  await page.waitForSelector("#settings-view", { state: "visible" });
  assert.equal(await page.evaluate(() => document.activeElement?.id), "settings-title", "focus moves to the screen");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "cap-jobs");
  assert.deepEqual(errors, []);
  await page.close();
});

// --- sign-in and consent in French --------------------------------------------------------

test("fr: sign-in, its checks, the device code and consent speak French", async () => {
  const { page, errors } = await open({
    state: snapshot(),
    commands: {
      get_settings: { resolve: settings("fr") },
      start_device_login: { resolve: deviceSignIn(HUB) },
      finish_device_login: { hold: true },
      get_consent: { resolve: [{ name: "http_request", granted: false, outdated: false, text: "core text" }] },
    },
  });
  assert.equal(await page.getAttribute("html", "lang"), "fr");
  assert.equal(await text(page, "#login-title"), "Connecter cet ordinateur");
  assert.equal(await text(page, "#login-submit"), "Obtenir un code de connexion");
  await assertNoEmptyStaticText(page);
  await screenshot(page, "50-login-fr");

  await page.getByRole("button", { name: "Obtenir un code de connexion" }).click();
  assert.equal(await text(page, "#hub-url-error"), "Saisissez l'adresse du hub.");
  await page.getByLabel("Adresse du hub").fill(HUB);
  await page.getByRole("button", { name: "Obtenir un code de connexion" }).click();
  await page.waitForSelector("#device-panel", { state: "visible" });
  assert.equal(await text(page, "#device-title"), "Approuvez cet ordinateur");
  assert.match(await text(page, "#device-expiry"), /^Le code expire dans (10:00|9:5\d)\.$/);
  assert.equal(await page.getAttribute("#device-qr-img", "alt"), "Code QR de la page d'approbation");
  assert.equal(await text(page, "#device-cancel"), "Annuler");
  await screenshot(page, "51-device-code-fr");

  await page.evaluate((s) => window.__release("finish_device_login", { resolve: s }), online);
  await page.waitForSelector("#consent-view", { state: "visible" });
  assert.equal(await text(page, "#consent-title"), "Choisissez ce que cet ordinateur peut faire");
  assert.equal(await text(page, "#consent-list label"), "Envoyer des requêtes web depuis votre connexion");
  assert.equal(await text(page, "#consent-done"), "Terminé");
  await screenshot(page, "52-consent-fr");
  assert.deepEqual(errors, []);
  await page.close();
});

test("fr: an error from the core is said in French, with the core's words underneath", async () => {
  const message = "the hub refused the request (invalid_enrollment_token)";
  const { page, errors } = await open({
    state: snapshot(),
    commands: {
      get_settings: { resolve: settings("fr") },
      login: { reject: { code: "hub_rejected", hubError: "invalid_enrollment_token", message } },
    },
  });
  await page.getByRole("button", { name: "Utiliser plutôt un jeton d'inscription" }).click();
  await page.getByLabel("Adresse du hub").fill(HUB);
  await page.getByLabel("Jeton d'inscription").fill("tok");
  await page.getByRole("button", { name: "Se connecter", exact: true }).click();
  await page.waitForSelector("#login-error", { state: "visible" });
  assert.equal(
    await text(page, "#login-error .error-summary"),
    "Ce jeton d'inscription est inconnu, déjà utilisé ou expiré. Demandez-en un nouveau.",
  );
  assert.equal(await text(page, "#login-error .error-detail"), message);
  assert.deepEqual(errors, []);
  await page.close();
});

test("without an answer from the tray the window follows the webview's language", async () => {
  // Nothing but the state is answered: no settings, so no language from the tray.
  const { page, errors } = await open({ state: snapshot(), commands: {} }, { locale: "fr-FR" });
  assert.equal(await page.getAttribute("html", "lang"), "fr");
  assert.equal(await text(page, "#login-title"), "Connecter cet ordinateur");
  assert.deepEqual(errors, []);
  await page.close();
});
