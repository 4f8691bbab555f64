// Tray window behaviour against the built ui/dist, with Tauri's IPC mocked.
// Run: npm test --prefix ui
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, openApp, screenshot, snapshot, startServer } from "./harness.mjs";

const HUB = "http://127.0.0.1:8787";
const loggedIn = snapshot({
  loggedIn: true,
  hubUrl: HUB,
  agentId: "0b8f6d2e-4c1a-4f3e-9a57-3d2c1b0a9f88",
  creatorId: "c1",
  connection: "connecting",
});

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

async function fill(page, hubUrl, token) {
  await page.getByLabel("Hub URL").fill(hubUrl);
  await page.getByLabel("Enrollment token").fill(token);
}

test("shows the login form when not logged in", async () => {
  const { page, errors } = await openApp(browser, server.url, { state: snapshot() });
  assert.equal(await page.isVisible("#login-form"), true);
  assert.equal(await page.isVisible("#status-view"), false);
  await screenshot(page, "01-login");
  assert.deepEqual(errors, []);
  await page.close();
});

test("field validation: URL must be http(s), token non-empty", async () => {
  const { page, errors } = await openApp(browser, server.url, { state: snapshot() });

  await page.getByRole("button", { name: "Log in" }).click();
  assert.equal(await page.textContent("#hub-url-error"), "Enter the hub URL.");
  assert.equal(await page.textContent("#token-error"), "Enter the enrollment token.");
  assert.equal(await page.getAttribute("#hub-url", "aria-invalid"), "true");

  await fill(page, "ftp://hub.example.com", "   ");
  await page.getByRole("button", { name: "Log in" }).click();
  assert.match(await page.textContent("#hub-url-error"), /must start with http:\/\/ or https:\/\//);
  assert.equal(await page.textContent("#token-error"), "Enter the enrollment token.");

  await fill(page, "not a url", "tok");
  await page.getByRole("button", { name: "Log in" }).click();
  assert.match(await page.textContent("#hub-url-error"), /must start with http/);
  assert.equal(await page.isVisible("#token-error"), false);
  assert.equal(await page.getAttribute("#token", "aria-invalid"), "false");
  await screenshot(page, "02-login-validation");

  // Editing a field takes its complaint away.
  await page.getByLabel("Hub URL").fill("https://hub.example.com");
  assert.equal(await page.isVisible("#hub-url-error"), false);
  assert.equal(await page.getAttribute("#hub-url", "aria-invalid"), "false");

  // Nothing invalid reaches the core.
  const calls = await page.evaluate(() => window.__ipcCalls.map((c) => c.cmd));
  assert.equal(calls.includes("login"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("login success switches to the status view", async () => {
  const { page, errors } = await openApp(browser, server.url, {
    state: snapshot(),
    commands: { login: { resolve: loggedIn } },
  });
  await fill(page, `  ${HUB} `, "enroll-token-123");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#status-view", { state: "visible" });

  const login = await page.evaluate(() => window.__ipcCalls.find((c) => c.cmd === "login"));
  assert.deepEqual(login.args, { hubUrl: HUB, token: "enroll-token-123" });
  assert.equal(await page.isVisible("#login-view"), false);
  assert.equal(await page.textContent("#connection-state"), "Connecting…");
  assert.equal(await page.textContent("#hub-url-value"), HUB);
  assert.equal(await page.textContent("#jobs-empty"), "No jobs yet.");
  await screenshot(page, "03-status-connecting");
  assert.deepEqual(errors, []);
  await page.close();
});

test("login error from the hub is shown in words", async () => {
  // What the core's AgentError serializes to when the hub refuses the token.
  const hubMessage =
    "the hub refused the request (invalid_enrollment_token): enrollment token is unknown, used or expired";
  const { page, errors } = await openApp(browser, server.url, {
    state: snapshot(),
    commands: {
      login: { reject: { code: "hub_rejected", hubError: "invalid_enrollment_token", message: hubMessage } },
    },
  });
  await fill(page, HUB, "bad-token");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#login-error", { state: "visible" });
  assert.equal(
    await page.textContent("#login-error .error-summary"),
    "The enrollment token is unknown, already used or expired. Ask for a new one.",
  );
  assert.equal(await page.textContent("#login-error .error-detail"), hubMessage);
  assert.equal(await page.getAttribute("#login-error", "role"), "alert");
  assert.equal(await page.isVisible("#login-form"), true);
  assert.equal(await page.isEnabled("#login-submit"), true);
  assert.equal(await page.textContent("#login-submit"), "Log in");
  await screenshot(page, "04-login-error");
  assert.deepEqual(errors, []);
  await page.close();
});

test("an error code the window does not know shows the core's own sentence", async () => {
  const { page } = await openApp(browser, server.url, {
    state: snapshot(),
    commands: { login: { reject: { code: "io", message: "cannot create /nowhere: permission denied" } } },
  });
  await fill(page, HUB, "tok");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#login-error", { state: "visible" });
  assert.equal(await page.textContent("#login-error"), "cannot create /nowhere: permission denied");
  await page.close();
});

test("live update: an agent://state event shows online and a job row", async () => {
  const { page, errors } = await openApp(browser, server.url, { state: loggedIn });
  assert.equal(await page.textContent("#connection-state"), "Connecting…");

  const now = new Date().toISOString();
  const delivered = await page.evaluate(
    (s) => window.__emit("agent://state", s),
    {
      ...loggedIn,
      connection: "online",
      busy: 1,
      recentJobs: [
        { id: "job_7f3a9c21", jobType: "http_request", status: "running", startedAt: now, finishedAt: null },
        {
          id: "job_11aa22bb",
          jobType: "http_request",
          status: "failed",
          startedAt: now,
          finishedAt: now,
          errorCode: "timeout",
          message: "The request timed out after 30 s.",
        },
        { id: "job_0c0c0c0c", jobType: "http_request", status: "succeeded", startedAt: now, finishedAt: now },
      ],
    },
  );
  assert.equal(delivered, 1, "the window listens to agent://state exactly once");

  await page.waitForSelector("#jobs-body tr");
  assert.equal(await page.textContent("#connection-state"), "Online");
  assert.equal(await page.getAttribute("#connection-state", "data-state"), "online");
  assert.equal(await page.textContent("#connection-badge"), "Working");
  const rows = await page.$$eval("#jobs-body tr", (trs) =>
    trs.map((tr) => ({ id: tr.dataset.jobId, status: tr.dataset.status, text: tr.textContent })),
  );
  assert.equal(rows.length, 3);
  assert.equal(rows[0].id, "job_7f3a9c21");
  assert.equal(rows[0].status, "running");
  assert.match(rows[0].text, /http_request/);
  assert.match(rows[0].text, /Running/);
  assert.match(rows[1].text, /timed out/);
  assert.equal(await page.getAttribute("#status-facts", "aria-live"), "polite");
  await screenshot(page, "05-status-online-jobs");
  assert.deepEqual(errors, []);
  await page.close();
});

test("pause toggles to resume and log out returns to the login form", async () => {
  const online = { ...loggedIn, connection: "online" };
  const { page, errors } = await openApp(browser, server.url, {
    state: online,
    commands: {
      pause: { resolve: { ...online, paused: true } },
      logout: { resolve: snapshot() },
    },
  });
  const toggle = page.locator("#pause-toggle");
  assert.equal(await toggle.textContent(), "Pause jobs");
  await toggle.click();
  await page.waitForFunction(() => document.querySelector("#pause-toggle").textContent === "Resume jobs");
  assert.equal(await toggle.getAttribute("aria-pressed"), "true");
  assert.match(await page.textContent("#paused-state"), /Paused/);
  await screenshot(page, "06-status-paused");

  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForSelector("#login-form", { state: "visible" });
  const cmds = await page.evaluate(() => window.__ipcCalls.map((c) => c.cmd));
  assert.ok(cmds.includes("pause") && cmds.includes("logout"));
  assert.deepEqual(errors, []);
  await page.close();
});

test("browser state: breaker pause, sites to log in to and volatile sessions, then ready", async () => {
  const online = { ...loggedIn, connection: "online" };
  const until = Date.now() + 30 * 60_000;
  const troubled = {
    executable: "/usr/bin/chromium",
    circuitOpenUntilMs: until,
    circuitReason: "RATE_LIMITED",
    sessionVolatile: true,
    loginRequired: ["fanhub", "otherfans"],
  };
  const { page, errors } = await openApp(browser, server.url, { state: { ...online, browser: troubled } });

  assert.equal(await page.getAttribute("#browser-state", "data-state"), "paused");
  assert.match(await page.textContent("#browser-state"), /^Paused until .+ — a site kept rate-limiting$/);
  assert.equal(await page.getAttribute("#browser-state time", "datetime"), new Date(until).toISOString());
  const sites = await page.$$eval("#browser-login-sites li", (items) =>
    items.map((li) => [li.dataset.site, li.querySelector("strong").textContent, li.querySelector("code").textContent]),
  );
  assert.deepEqual(sites, [
    ["fanhub", "fanhub", "edge-agent browser login --site fanhub"],
    ["otherfans", "otherfans", "edge-agent browser login --site otherfans"],
  ]);
  assert.equal(await page.isVisible("#browser-logins"), true);
  assert.match(await page.textContent("#browser-volatile"), /site logins last only until the agent stops/);
  assert.equal(await page.isVisible("#browser-volatile"), true);
  await screenshot(page, "07-browser-paused-login-volatile");

  // The breaker closed and the logins happened: the core's next snapshot clears it all.
  await page.evaluate((s) => window.__emit("agent://state", s), {
    ...online,
    browser: { ...troubled, circuitOpenUntilMs: null, circuitReason: null, sessionVolatile: false, loginRequired: [] },
  });
  await page.waitForSelector("#browser-state[data-state=ready]");
  assert.equal(await page.textContent("#browser-state"), "Ready");
  assert.equal(await page.isVisible("#browser-logins"), false);
  assert.equal(await page.isVisible("#browser-volatile"), false);
  assert.equal(await page.$$eval("#browser-login-sites li", (items) => items.length), 0);

  // No browser on this machine: browser jobs cannot run at all.
  await page.evaluate((s) => window.__emit("agent://state", s), {
    ...online,
    browser: { executable: null, circuitOpenUntilMs: null, circuitReason: null, sessionVolatile: false, loginRequired: [] },
  });
  await page.waitForSelector("#browser-state[data-state=unavailable]");
  assert.equal(await page.textContent("#browser-state"), "Not available: install Chrome, Chromium or Edge");
  assert.deepEqual(errors, []);
  await page.close();
});

test("before the browser runtime started the window says nothing about it", async () => {
  const { page, errors } = await openApp(browser, server.url, { state: { ...loggedIn, connection: "online" } });
  assert.equal(await page.isVisible("#status-view"), true);
  assert.equal(await page.isVisible("#browser-row"), false);
  assert.equal(await page.isVisible("#browser-logins"), false);
  assert.equal(await page.isVisible("#browser-volatile"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("tunnel: off, then open with its connections and the services the person exposed", async () => {
  const online = { ...loggedIn, connection: "online" };
  const { page, errors } = await openApp(browser, server.url, { state: online });
  // An older core sends no tunnel at all: the window says it is off and lists nothing.
  assert.equal(await page.getAttribute("#tunnel-state", "data-state"), "off");
  assert.equal(await page.textContent("#tunnel-state"), "Off (not allowed, or paused)");
  assert.equal(await page.isVisible("#exposed-row"), false);

  await page.evaluate((s) => window.__emit("agent://state", s), {
    ...online,
    tunnel: { state: "open", streams: 3, exposed: { dashboard: "127.0.0.1:3000", obs: "127.0.0.1:4455" } },
  });
  await page.waitForSelector("#tunnel-state[data-state=open]");
  assert.equal(await page.textContent("#tunnel-state"), "Open — 3 connections now");
  const exposed = await page.$$eval("#exposed-list li", (items) =>
    items.map((li) => [li.dataset.name, li.querySelector("strong").textContent, li.querySelector("code").textContent]),
  );
  assert.deepEqual(exposed, [
    ["dashboard", "dashboard", "127.0.0.1:3000"],
    ["obs", "obs", "127.0.0.1:4455"],
  ]);
  assert.equal(await page.isVisible("#exposed-row"), true);
  await screenshot(page, "08-tunnel-open-exposed");

  await page.evaluate((s) => window.__emit("agent://state", s), {
    ...online,
    tunnel: { state: "connecting", streams: 0, exposed: {} },
  });
  await page.waitForSelector("#tunnel-state[data-state=connecting]");
  assert.equal(await page.textContent("#tunnel-state"), "Connecting…");
  assert.equal(await page.isVisible("#exposed-row"), false);
  assert.deepEqual(errors, []);
  await page.close();
});
