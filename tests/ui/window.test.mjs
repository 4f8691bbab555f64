// Tray window behaviour against the built ui/dist, with Tauri's IPC mocked.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { deviceSignIn, screenshot, snapshot, windowUnderTest } from "./harness.mjs";

const HUB = "http://127.0.0.1:8787";
const loggedIn = snapshot({
  loggedIn: true,
  hubUrl: HUB,
  agentId: "0b8f6d2e-4c1a-4f3e-9a57-3d2c1b0a9f88",
  creatorId: "c1",
  connection: "connecting",
});

const open = windowUnderTest();

async function useToken(page) {
  await page.getByRole("button", { name: "Use an enrollment token instead" }).click();
}

async function fill(page, hubUrl, token) {
  if (!(await page.isVisible("#token"))) await useToken(page);
  await page.getByLabel("Hub URL").fill(hubUrl);
  await page.getByLabel("Enrollment token").fill(token);
}

test("shows the login form when not logged in", async () => {
  const { page, errors } = await open({ state: snapshot() });
  assert.equal(await page.isVisible("#login-form"), true);
  assert.equal(await page.isVisible("#status-view"), false);
  await screenshot(page, "01-login");
  assert.deepEqual(errors, []);
  await page.close();
});

test("field validation: URL must be http(s), token non-empty", async () => {
  const { page, errors } = await open({ state: snapshot() });

  await useToken(page);
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
  const { page, errors } = await open({
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
  const { page, errors } = await open({
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
  const { page } = await open({
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
  const { page, errors } = await open({ state: loggedIn });
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
  const { page, errors } = await open({
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
  const { page, errors } = await open({ state: { ...online, browser: troubled } });

  assert.equal(await page.getAttribute("#browser-state", "data-state"), "paused");
  assert.match(await page.textContent("#browser-state"), /^Paused until .+ — a site kept rate-limiting$/);
  assert.equal(await page.getAttribute("#browser-state time", "datetime"), new Date(until).toISOString());
  // A button that opens the browser on the site, not a command to copy.
  const sites = await page.$$eval("#browser-login-sites li", (items) =>
    items.map((li) => [li.dataset.site, li.querySelector("strong").textContent, li.querySelector("button").textContent]),
  );
  assert.deepEqual(sites, [
    ["fanhub", "fanhub", "Log in to fanhub"],
    ["otherfans", "otherfans", "Log in to otherfans"],
  ]);
  assert.equal(await page.textContent("#home-sentence"), "Needs you: log in to fanhub");
  assert.equal(await page.$$eval("#status-view code", (codes) => codes.length), 0);
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
  const { page, errors } = await open({ state: { ...loggedIn, connection: "online" } });
  assert.equal(await page.isVisible("#status-view"), true);
  assert.equal(await page.isVisible("#browser-row"), false);
  assert.equal(await page.isVisible("#browser-logins"), false);
  assert.equal(await page.isVisible("#browser-volatile"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("tunnel: off, then open with its connections and the services the person exposed", async () => {
  const online = { ...loggedIn, connection: "online" };
  const { page, errors } = await open({ state: online });
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

// --- device sign-in ---------------------------------------------------------------------

const COMPLETE = deviceSignIn(HUB).verificationUriComplete;
// A real QR code as the tray's Rust renders it is an <svg> document; the window must show
// whatever it is given, as a picture.
const QR_SVG =
  '<?xml version="1.0" standalone="yes"?><svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="180" height="180" viewBox="0 0 180 180"><rect x="0" y="0" width="180" height="180" fill="#fff"/><path fill="#000" d="M10 10h20v20h-20z"/></svg>';
const deviceCode = deviceSignIn(HUB, QR_SVG);
const CONSENT = [
  { name: "http_request", granted: false, outdated: false, text: "Proxying HTTP requests: core text." },
  { name: "bundle", granted: false, outdated: false, text: "Running signed bundles: NOT confined by the agent's egress gate." },
  { name: "tunnel", granted: false, outdated: false, text: "The tunnel: core text." },
];

async function askForCode(page, hubUrl = HUB) {
  await page.getByLabel("Hub URL").fill(hubUrl);
  await page.getByRole("button", { name: "Get a sign-in code" }).click();
  await page.waitForSelector("#device-panel", { state: "visible" });
}

const calls = (page, cmd) => page.evaluate((c) => window.__ipcCalls.filter((x) => x.cmd === c), cmd);

test("sign-in by code is the default: only the hub URL is asked for", async () => {
  const { page, errors } = await open({ state: snapshot() });
  assert.equal(await page.isVisible("#hub-url"), true);
  assert.equal(await page.isVisible("#token"), false);
  assert.equal(await page.textContent("#login-submit"), "Get a sign-in code");
  // An empty or wrong address never reaches the core.
  await page.getByRole("button", { name: "Get a sign-in code" }).click();
  assert.equal(await page.textContent("#hub-url-error"), "Enter the hub URL.");
  assert.equal(await page.isVisible("#token-error"), false);
  await page.getByLabel("Hub URL").fill("hub.example.com");
  await page.getByRole("button", { name: "Get a sign-in code" }).click();
  assert.match(await page.textContent("#hub-url-error"), /must start with http/);
  assert.deepEqual(await calls(page, "start_device_login"), []);
  await screenshot(page, "10-device-start");
  assert.deepEqual(errors, []);
  await page.close();
});

test("the code is shown large with the QR code, the page to open and the time left", async () => {
  const { page, errors } = await open({
    state: snapshot(),
    commands: {
      start_device_login: { resolve: deviceCode },
      finish_device_login: { hold: true },
      open_approval_page: { resolve: null },
    },
  });
  await askForCode(page, `  ${HUB}  `);
  assert.deepEqual((await calls(page, "start_device_login"))[0].args, { hubUrl: HUB });
  assert.equal(await page.textContent("#device-code"), "WDJB-MJHT");
  assert.equal(await page.isVisible("#login-form"), false);
  assert.equal(await page.textContent("#verification-uri"), `${HUB}/device`);
  // The one wait has started, and nothing polls from the window.
  await page.waitForFunction(() => window.__held.finish_device_login);
  assert.equal((await calls(page, "finish_device_login")).length, 1);

  // The QR code: the SVG given by the core, as an image, for the complete URL.
  const qr = await page.$eval("#device-qr-img", (img) => ({
    src: img.src,
    url: img.dataset.url,
    alt: img.alt,
    loaded: img.complete && img.naturalWidth > 0,
  }));
  assert.ok(qr.src.startsWith("data:image/svg+xml"), qr.src.slice(0, 40));
  assert.equal(decodeURIComponent(qr.src.slice(qr.src.indexOf(",") + 1)), QR_SVG);
  assert.equal(qr.url, COMPLETE);
  assert.equal(qr.alt, "QR code of the approval page");
  assert.equal(qr.loaded, true, "the SVG renders as a picture");

  // The time left, counted down on this machine.
  assert.match(await page.textContent("#device-expiry"), /^The code expires in (10:00|9:5\d)\.$/);
  const before = Number(await page.getAttribute("#device-expiry", "data-seconds-left"));
  await page.waitForFunction((b) => Number(document.querySelector("#device-expiry").dataset.secondsLeft) < b, before);

  // The code is selectable text, and the page opens through the app's own command with
  // the complete URL.
  assert.equal(await page.$eval("#device-code", (el) => getComputedStyle(el).userSelect), "all");
  await page.getByRole("button", { name: "Open the approval page" }).click();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "open_approval_page"));
  assert.deepEqual((await calls(page, "open_approval_page"))[0].args, { url: COMPLETE });
  await screenshot(page, "11-device-code");
  assert.deepEqual(errors, []);
  await page.close();
});

test("approval: the window goes to the consent screen when nothing is granted yet", async () => {
  const { page, errors } = await open({
    state: snapshot(),
    commands: {
      start_device_login: { resolve: deviceCode },
      finish_device_login: { hold: true },
      get_consent: { resolve: CONSENT },
    },
  });
  await askForCode(page);
  await page.waitForFunction(() => window.__held.finish_device_login);
  await page.evaluate((s) => window.__release("finish_device_login", { resolve: s }), loggedIn);
  await page.waitForSelector("#consent-view", { state: "visible" });
  assert.equal(await page.isVisible("#login-view"), false);
  assert.equal(await page.isVisible("#status-view"), false);
  assert.equal(await page.textContent("#consent-title"), "Choose what this computer may do");
  assert.deepEqual(errors, []);
  await page.close();
});

for (const [code, words, message] of [
  ["device_login_expired", /^The code expired before it was approved\. Get a new code/, "the code was not approved within 10 minutes"],
  ["device_login_denied", /^Someone chose Deny on the hub's page\./, "the sign-in was denied on the hub's page"],
]) {
  test(`device sign-in error ${code} is said in words with what to do`, async () => {
    const { page, errors } = await open({
      state: snapshot(),
      commands: {
        start_device_login: { resolve: deviceCode },
        finish_device_login: { reject: { code, message } },
      },
    });
    await askForCode(page);
    await page.waitForSelector("#device-error", { state: "visible" });
    assert.match(await page.textContent("#device-error .error-summary"), words);
    assert.equal(await page.textContent("#device-error .error-detail"), message);
    assert.equal(await page.getAttribute("#device-error", "role"), "alert");
    // The stale code and QR are gone; a new code or Back are offered.
    assert.equal(await page.isVisible("#device-qr"), false);
    assert.equal(await page.isVisible("#open-approval"), false);
    assert.equal(await page.isVisible("#device-retry"), true);
    assert.equal(await page.textContent("#device-cancel"), "Back");
    await screenshot(page, `12-${code}`);
    await page.getByRole("button", { name: "Get a new code" }).click();
    await page.waitForFunction(() => window.__ipcCalls.filter((c) => c.cmd === "start_device_login").length === 2);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("an address that is no hub, or no hub at all, is said in words before any code", async () => {
  for (const [reject, words] of [
    [
      { code: "device_login_unsupported", message: "http://127.0.0.1:9/ does not offer device sign-in (not_found: no route)" },
      /^This address answers, but not as a hub that offers sign-in by code\. Check the address, or use an enrollment token instead\.$/,
    ],
    [{ code: "hub_unreachable", message: "connection refused" }, /^The hub could not be reached\. Check the URL/],
  ]) {
    const { page, errors } = await open({
      state: snapshot(),
      commands: { start_device_login: { reject } },
    });
    await page.getByLabel("Hub URL").fill(HUB);
    await page.getByRole("button", { name: "Get a sign-in code" }).click();
    await page.waitForSelector("#login-error", { state: "visible" });
    assert.match(await page.textContent("#login-error .error-summary"), words);
    assert.equal(await page.isVisible("#device-panel"), false);
    assert.equal(await page.textContent("#login-submit"), "Get a sign-in code");
    assert.deepEqual(errors, []);
    await page.close();
  }
});

test("cancel stops the wait in the core and goes back to the form", async () => {
  const { page, errors } = await open({
    state: snapshot(),
    commands: {
      start_device_login: { resolve: deviceCode },
      finish_device_login: { hold: true },
      cancel_device_login: { resolve: null },
    },
  });
  await askForCode(page);
  await page.waitForFunction(() => window.__held.finish_device_login);
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.waitForSelector("#login-form", { state: "visible" });
  assert.equal((await calls(page, "cancel_device_login")).length, 1);
  assert.equal(await page.isVisible("#device-panel"), false);
  // The core answers the cancelled wait with null; a late answer changes nothing.
  await page.evaluate(() => window.__release("finish_device_login", { resolve: null }));
  await page.waitForTimeout(50);
  assert.equal(await page.isVisible("#login-form"), true);
  assert.equal(await page.isVisible("#device-error"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("the enrollment token form is one click away and back", async () => {
  const { page, errors } = await open({ state: snapshot() });
  await useToken(page);
  assert.equal(await page.isVisible("#token"), true);
  assert.equal(await page.textContent("#login-submit"), "Log in");
  await page.getByRole("button", { name: "Sign in with a code instead" }).click();
  assert.equal(await page.isVisible("#token"), false);
  assert.equal(await page.textContent("#login-submit"), "Get a sign-in code");
  assert.deepEqual(errors, []);
  await page.close();
});

// --- consent ---------------------------------------------------------------------------

test("consent: every capability in words, off until ticked; ticking grants, unticking revokes", async () => {
  const granted = CONSENT.map((c) => (c.name === "http_request" ? { ...c, granted: true } : c));
  const { page, errors } = await open({
    state: loggedIn,
    commands: {
      get_consent: { resolve: CONSENT },
      grant_capability: { resolve: granted },
      revoke_capability: { resolve: CONSENT },
    },
  });
  // Logged in with nothing granted: the consent screen comes first.
  await page.waitForSelector("#consent-view", { state: "visible" });
  const rows = await page.$$eval("#consent-list li", (items) =>
    items.map((li) => ({
      name: li.dataset.capability,
      label: li.querySelector("label").textContent,
      what: li.querySelector(".consent-what")?.textContent ?? "",
      checked: li.querySelector("input").checked,
      text: li.querySelector(".consent-text").textContent,
    })),
  );
  assert.deepEqual(
    rows.map((r) => [r.name, r.label, r.checked]),
    [
      ["http_request", "Send web requests from your connection", false],
      ["bundle", "Run signed scripts", false],
      ["tunnel", "Share your connection through the tunnel", false],
    ],
  );
  for (const r of rows) assert.match(r.what, /can .*; it cannot/, `${r.name}: ${r.what}`);
  assert.equal(rows[1].text, CONSENT[1].text, "the core's text, which the grant records, is shown");
  assert.match(await page.textContent("#consent-intro"), /narrow it, never widen it/);
  await screenshot(page, "20-consent");

  await page.getByLabel("Send web requests from your connection").check();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "grant_capability"));
  assert.deepEqual((await calls(page, "grant_capability"))[0].args, { name: "http_request" });
  await page.waitForSelector('#consent-list li[data-capability="http_request"] input:checked:not(:disabled)');
  // The redrawn list keeps the keyboard focus on the box just ticked.
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.capability), "http_request");

  await page.getByLabel("Send web requests from your connection").uncheck();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "revoke_capability"));
  assert.deepEqual((await calls(page, "revoke_capability"))[0].args, { name: "http_request" });
  await page.waitForSelector('#consent-list li[data-capability="http_request"] input:not(:checked):not(:disabled)');

  await page.getByRole("button", { name: "Done" }).click();
  await page.waitForSelector("#status-view", { state: "visible" });
  assert.equal(await page.isVisible("#consent-view"), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("consent: a refused grant leaves the box unticked and says why", async () => {
  const { page, errors } = await open({
    state: loggedIn,
    commands: {
      get_consent: { resolve: CONSENT },
      grant_capability: { reject: { code: "io", message: "cannot write settings.json: read-only file system" } },
    },
  });
  await page.waitForSelector("#consent-view", { state: "visible" });
  await page.getByLabel("Run signed scripts").check();
  await page.waitForSelector("#consent-error", { state: "visible" });
  assert.equal(await page.textContent("#consent-error"), "cannot write settings.json: read-only file system");
  assert.equal(await page.isChecked('#consent-list li[data-capability="bundle"] input'), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test("consent: browser tasks per site, added by name, off until ticked", async () => {
  const withSite = [...CONSENT, { name: "browser:fanhub", granted: true, outdated: false, text: "Browser flows on fanhub." }];
  const { page, errors } = await open({
    state: loggedIn,
    commands: { get_consent: { resolve: CONSENT }, grant_capability: { resolve: withSite } },
  });
  await page.waitForSelector("#consent-view", { state: "visible" });
  // A wildcard or a path is not a site name.
  for (const bad of ["*", "a/b", ""]) {
    await page.getByLabel("Allow browser tasks on another site").fill(bad);
    await page.getByRole("button", { name: "Add" }).click();
    assert.match(await page.textContent("#site-name-error"), /Type the site's name/);
  }
  await page.getByLabel("Allow browser tasks on another site").fill("fanhub");
  await page.getByRole("button", { name: "Add" }).click();
  const box = page.getByLabel("Run browser tasks on fanhub as you");
  assert.equal(await box.isChecked(), false, "adding a site grants nothing by itself");
  assert.deepEqual(await calls(page, "grant_capability"), []);
  await box.check();
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "grant_capability"));
  assert.deepEqual((await calls(page, "grant_capability"))[0].args, { name: "browser:fanhub" });
  await page.waitForSelector('#consent-list li[data-capability="browser:fanhub"] input:checked');
  assert.match(
    await page.textContent('#consent-list li[data-capability="browser:fanhub"] .consent-what'),
    /on fanhub in your name; it cannot act on any other site/,
  );
  await screenshot(page, "21-consent-site");
  assert.deepEqual(errors, []);
  await page.close();
});

test("consent: reached from the status view through Permissions, with what is granted ticked", async () => {
  const some = CONSENT.map((c) => (c.name === "tunnel" ? { ...c, granted: true } : c));
  const { page, errors } = await open({
    state: { ...loggedIn, connection: "online" },
    commands: { get_consent: { resolve: some } },
  });
  // Something is granted: the status view comes first.
  await page.waitForFunction(() => window.__ipcCalls.some((c) => c.cmd === "get_consent"));
  assert.equal(await page.isVisible("#status-view"), true);
  assert.equal(await page.isVisible("#consent-view"), false);
  await page.getByRole("button", { name: "Permissions" }).click();
  await page.waitForSelector("#consent-view", { state: "visible" });
  assert.equal(await page.isChecked('#consent-list li[data-capability="tunnel"] input'), true);
  assert.equal(await page.isChecked('#consent-list li[data-capability="http_request"] input'), false);
  await page.getByRole("button", { name: "Done" }).click();
  await page.waitForSelector("#status-view", { state: "visible" });
  assert.deepEqual(errors, []);
  await page.close();
});

test("consent: a grant of an older text shows unticked with a note to read it again", async () => {
  const outdated = CONSENT.map((c) => (c.name === "bundle" ? { ...c, outdated: true } : c));
  const { page, errors } = await open({
    state: loggedIn,
    commands: { get_consent: { resolve: outdated } },
  });
  await page.waitForSelector("#consent-view", { state: "visible" });
  const li = '#consent-list li[data-capability="bundle"]';
  assert.equal(await page.isChecked(`${li} input`), false);
  assert.match(await page.textContent(`${li} .consent-outdated`), /wording changed/);
  assert.deepEqual(errors, []);
  await page.close();
});
