// The Jobs screen (issue 20) in English and in French: a live list of tasks in words with
// their progress, errors in words with the next step, Cancel, the last screenshot of a
// browser task; the pause lengths on Home; a clicked notification opening its task.
// Against the built ui/dist with Tauri's IPC mocked. Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { screenshot, snapshot, windowUnderTest } from "./harness.mjs";

// A 2×2 PNG, as the core's `job_screenshot` answers: a data: URL, never a path.
const PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEUlEQVR4nGP4z8AARAxg8j8AG/ID/fPnS7EAAAAASUVORK5CYII=";
const STARTED = "2026-12-06T10:00:00Z";

function broadcast(done, overrides = {}) {
  return {
    id: "job_b1",
    jobType: "broadcast_dm",
    status: "running",
    startedAt: STARTED,
    finishedAt: null,
    errorCode: null,
    message: null,
    progress: { done, total: 40 },
    summary: { site: "FanDeck", recipient: null, recipients: 40, dryRun: false },
    screenshot: true,
    ...overrides,
  };
}

const SENT = {
  id: "job_dm1",
  jobType: "send_dm",
  status: "succeeded",
  startedAt: STARTED,
  finishedAt: "2026-12-06T10:00:05Z",
  errorCode: null,
  message: null,
  progress: { done: 1, total: 1 },
  summary: { site: "FanDeck", recipient: "@ann", recipients: null, dryRun: false },
  screenshot: false,
};

const FAILED = {
  id: "job_http1",
  jobType: "http_request",
  status: "failed",
  startedAt: STARTED,
  finishedAt: "2026-12-06T10:00:09Z",
  errorCode: "NETWORK",
  message: "connection refused by 203.0.113.9:443",
  progress: null,
  summary: { site: null, recipient: null, recipients: null, dryRun: false },
  screenshot: false,
};

function state(jobs, overrides = {}) {
  return snapshot({
    loggedIn: true,
    hubUrl: "http://127.0.0.1:8787",
    agentId: "agt-1",
    connection: "online",
    busy: 1,
    recentJobs: jobs,
    ...overrides,
  });
}

function settings(lang) {
  return {
    caps: { jobsPerHour: null, messagesPerHour: null, bytesPerDay: null },
    quietHours: null,
    uploadsDir: null,
    startAtLogin: false,
    language: "system",
    effectiveLanguage: lang,
    sites: [],
  };
}

function app(lang, jobs, commands = {}) {
  return {
    state: state(jobs),
    commands: {
      get_settings: { resolve: settings(lang) },
      get_consent: { resolve: [{ name: "http_request", granted: true, outdated: false, text: "core text" }] },
      get_usage: { resolve: { jobsToday: 3, bytesToday: 0, caps: { jobsPerHour: null, messagesPerHour: null, bytesPerDay: null } } },
      job_screenshot: { resolve: PNG },
      ...commands,
    },
  };
}

const calls = (page, cmd) => page.evaluate((c) => window.__ipcCalls.filter((x) => x.cmd === c), cmd);
const text = (page, selector) => page.textContent(selector).then((t) => t.trim());
const item = (id) => `#jobs-list > li[data-job-id="${id}"]`;

const open = windowUnderTest();

const WORDS = {
  en: {
    openJobs: "Tasks",
    broadcast12: "Broadcast to 40 fans on FanDeck: 12/40 sent",
    broadcast13: "Broadcast to 40 fans on FanDeck: 13/40 sent",
    sent: "Sent a message to @ann on FanDeck",
    network: "The site could not be reached. Check this computer's internet connection; your hub tries again later.",
    cancel: "Cancel",
    cancelled: "Cancelled. Your hub was told.",
    screenshotAlt: "Last screenshot of this task",
    notRunning: "This task is not running any more: there is nothing to cancel.",
  },
  fr: {
    openJobs: "Tâches",
    broadcast12: "Envoi à 40 fans sur FanDeck : 12/40 envoyés",
    broadcast13: "Envoi à 40 fans sur FanDeck : 13/40 envoyés",
    sent: "Message envoyé à @ann sur FanDeck",
    network:
      "Le site est injoignable. Vérifiez la connexion internet de cet ordinateur ; votre hub réessaiera plus tard.",
    cancel: "Annuler",
    cancelled: "Annulée. Votre hub a été prévenu.",
    screenshotAlt: "Dernière capture d'écran de cette tâche",
    notRunning: "Cette tâche n'est plus en cours : il n'y a rien à annuler.",
  },
};

for (const lang of ["en", "fr"]) {
  const words = WORDS[lang];

  test(`${lang}: the Jobs screen lists tasks in words, live, with progress, errors, the screenshot and Cancel`, async () => {
    const afterCancel = state([
      broadcast(13, { status: "failed", finishedAt: "2026-12-06T10:01:00Z", errorCode: "CANCELLED", message: "cancelled by the person at the agent's computer" }),
      SENT,
      FAILED,
    ], { busy: 0 });
    const { page, errors } = await open(app(lang, [broadcast(12), SENT, FAILED], { cancel_job: { resolve: afterCancel } }));
    await page.getByRole("button", { name: words.openJobs, exact: true }).click();
    await page.waitForSelector("#jobs-view", { state: "visible" });
    assert.equal(await page.isVisible("#status-view"), false);

    // What each did, in words; the broadcast's progress as a bar and a count.
    assert.equal(await text(page, `${item("job_b1")} .job-words`), words.broadcast12);
    assert.equal(await text(page, `${item("job_dm1")} .job-words`), words.sent);
    assert.equal(await page.getAttribute(`${item("job_b1")} progress`, "max"), "40");
    assert.equal(await page.$eval(`${item("job_b1")} progress`, (p) => p.value), 12);
    assert.equal(await text(page, `${item("job_b1")} .job-progress-count`), "12/40");

    // An error in words with the next step, the core's words underneath.
    assert.equal(await text(page, `${item("job_http1")} .job-error .error-summary`), words.network);
    assert.equal(await text(page, `${item("job_http1")} .job-error .error-detail`), FAILED.message);

    // The last screenshot, asked for by job id only.
    await page.waitForSelector(`${item("job_b1")} img.job-screenshot`, { state: "visible" });
    assert.equal(await page.getAttribute(`${item("job_b1")} img.job-screenshot`, "src"), PNG);
    assert.equal(await page.getAttribute(`${item("job_b1")} img.job-screenshot`, "alt"), words.screenshotAlt);
    assert.deepEqual((await calls(page, "job_screenshot")).map((c) => c.args), [{ id: "job_b1" }]);
    assert.equal(await page.$(`${item("job_dm1")} img`), null, "no screenshot, no image");
    // Only running tasks can be cancelled.
    assert.equal(await page.$$eval("#jobs-list button.job-cancel", (b) => b.length), 1);
    await screenshot(page, `70-jobs-${lang}`);

    // Live: a new state from the core redraws the list, nobody asks for it.
    const asked = (await calls(page, "get_state")).length;
    await page.evaluate((s) => window.__emit("agent://state", s), state([broadcast(13), SENT, FAILED]));
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent === want,
      [`${item("job_b1")} .job-words`, words.broadcast13],
    );
    assert.equal((await calls(page, "get_state")).length, asked);

    // Cancel calls the core with the task's id; the task then shows as cancelled.
    await page.locator(`${item("job_b1")} button.job-cancel`).click();
    await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "cancel_job"));
    assert.deepEqual((await calls(page, "cancel_job"))[0].args, { id: "job_b1" });
    await page.waitForSelector(`${item("job_b1")}[data-status="failed"]`);
    assert.equal(await text(page, `${item("job_b1")} .job-error .error-summary`), words.cancelled);
    assert.equal(await page.$$eval("#jobs-list button.job-cancel", (b) => b.length), 0);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${lang}: a Cancel that comes too late is said in words`, async () => {
    const { page, errors } = await open(
      app(lang, [broadcast(12)], {
        cancel_job: { reject: { code: "job_not_running", message: "the task job_b1 is not running any more" } },
      }),
    );
    await page.getByRole("button", { name: words.openJobs, exact: true }).click();
    await page.getByRole("button", { name: words.cancel, exact: false }).click();
    await page.waitForSelector("#jobs-error", { state: "visible" });
    assert.equal(await text(page, "#jobs-error .error-summary"), words.notRunning);
    // The button is usable again once the answer came.
    assert.equal(await page.isDisabled(`${item("job_b1")} button.job-cancel`), false);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("Home: the pause lengths go to the core and the sentence says until when", async () => {
  const until = new Date(Date.now() + 60 * 60_000);
  const paused = state([], { paused: true, pausedUntil: until.toISOString(), busy: 0 });
  const { page, errors } = await open(app("en", [], { pause: { resolve: paused } }));
  await page.waitForSelector("#status-view", { state: "visible" });
  assert.equal(await page.isVisible("#pause-options"), false);
  await page.getByRole("button", { name: "Pause for…" }).click();
  assert.equal(await page.getAttribute("#pause-more", "aria-expanded"), "true");
  await page.getByRole("button", { name: "Pause for 1 hour" }).click();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "pause"));
  assert.deepEqual((await calls(page, "pause"))[0].args, { length: "oneHour" });
  const time = until.toLocaleTimeString("en", { hour: "2-digit", minute: "2-digit" });
  await page.waitForFunction(() => document.querySelector("#home-sentence").dataset.state === "paused");
  assert.equal(await text(page, "#home-sentence"), `Paused until ${time}`);
  assert.equal(await page.isVisible("#pause-options"), false, "the menu closes");
  await screenshot(page, "72-home-paused-until-en");
  assert.deepEqual(errors, []);
  await page.close();
});

test("fr: the pause lengths and the sentence in French", async () => {
  const until = new Date(Date.now() + 60 * 60_000);
  const paused = state([], { paused: true, pausedUntil: until.toISOString(), busy: 0 });
  const { page, errors } = await open(app("fr", [], { pause: { resolve: paused } }));
  await page.getByRole("button", { name: "Mettre en pause pour…" }).click();
  await page.getByRole("button", { name: "Mettre en pause jusqu'à demain 8 h" }).click();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "pause"));
  assert.deepEqual((await calls(page, "pause"))[0].args, { length: "untilTomorrow" });
  const time = until.toLocaleTimeString("fr", { hour: "2-digit", minute: "2-digit" });
  await page.waitForFunction(() => document.querySelector("#home-sentence").dataset.state === "paused");
  assert.equal(await text(page, "#home-sentence"), `En pause jusqu'à ${time}`);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a clicked notification opens the window on its task", async () => {
  const { page, errors } = await open(app("en", [broadcast(12), SENT, FAILED], { take_open_job: { resolve: { job: "job_dm1" } } }));
  // A window the click built asks at start.
  await page.waitForSelector("#jobs-view", { state: "visible" });
  assert.equal(await page.getAttribute(item("job_dm1"), "data-highlight"), "true");
  assert.equal(await page.getAttribute(item("job_b1"), "data-highlight"), "false");
  // An open window hears it.
  await page.getByRole("button", { name: "Back to Home" }).click();
  await page.waitForSelector("#status-view", { state: "visible" });
  await page.evaluate(() => window.__emit("agent://open-job", "job_dm1"));
  await page.waitForSelector("#jobs-view", { state: "visible" });
  assert.equal(await page.getAttribute(item("job_dm1"), "data-highlight"), "true");
  assert.deepEqual(errors, []);
  await page.close();
});
