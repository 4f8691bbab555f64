// Every screen of the tray window (sign-in, device code, consent, Home, Settings, Tasks) at 200 % zoom, in English and in French: nothing is cut
// off or needs a sideways scroll, every control has a name a screen reader can say, and
// every control is reachable with Tab.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { deviceSignIn, screenshot, snapshot, windowUnderTest } from "./harness.mjs";

const HUB = "http://127.0.0.1:8787";
const TODAY = new Date().toISOString().slice(0, 10);
// Long values on purpose: an id, a fingerprint and an error of the kind that used to run
// off the window.
const busyHome = snapshot({
  loggedIn: true,
  hubUrl: "https://edge-hub.a-rather-long-workspace-name.example.com:8443",
  agentId: "0b8f6d2e-4c1a-4f3e-9a57-3d2c1b0a9f88",
  creatorId: "c1",
  connection: "online",
  busy: 1,
  rootFingerprint: "a3f1".repeat(16),
  lastError: "the hub at https://edge-hub.a-rather-long-workspace-name.example.com:8443 closed the connection",
  usage: { day: TODAY, jobsToday: 12 },
  recentJobs: [
    {
      id: "job_01a245cd9e8f7a6b5c4d3e2f1a0b9c8d",
      jobType: "broadcast_dm",
      status: "running",
      startedAt: new Date().toISOString(),
    },
    {
      id: "job_02b356de0f9a8b7c6d5e4f3a2b1c0d9e",
      jobType: "http_request",
      status: "failed",
      startedAt: new Date().toISOString(),
      finishedAt: new Date().toISOString(),
      errorCode: "EGRESS_DENIED",
      message: "the address 192.168.1.20 is on your local network, which tasks may not reach",
    },
  ],
  browser: { executable: "/usr/bin/chromium", sessionVolatile: true, loginRequired: ["fandeck"] },
  tunnel: { state: "open", streams: 3, exposed: { "photo-library": "127.0.0.1:8080" } },
  updates: { ready: "1.4.0", unreachableDays: 9 },
});

function settings(lang) {
  return {
    caps: { jobsPerHour: 20, messagesPerHour: 30, bytesPerDay: 500_000_000 },
    quietHours: { start: "22:00", end: "07:00" },
    uploadsDir: "/home/someone-with-a-long-name/Documents/Uploads for Edge Agent/2026",
    startAtLogin: true,
    language: lang,
    effectiveLanguage: lang,
    sites: ["fandeck", "fanhub"],
  };
}

// Two accounts with long names, the one shown an added one: the account bar, with its
// Remove button, is on every screen checked below.
const ACCOUNTS = [
  { id: "main", active: false, loggedIn: true, hubUrl: "https://hub.a-rather-long-agency-name.example.com",
    creatorId: "c-creator-with-a-rather-long-name", paused: true, connection: "online", busy: 0 },
  { id: "acct-2", active: true, loggedIn: true, hubUrl: HUB, creatorId: "c-second", paused: false,
    connection: "online", busy: 1 },
];

function config(lang, state, consent) {
  return {
    state,
    commands: {
      list_accounts: { resolve: ACCOUNTS },
      get_settings: { resolve: settings(lang) },
      get_consent: { resolve: consent },
      get_usage: {
        resolve: { jobsToday: 12, bytesToday: 123_456_789, caps: { jobsPerHour: 20, messagesPerHour: 30, bytesPerDay: 500_000_000 } },
      },
      start_device_login: { resolve: deviceSignIn(HUB) },
      finish_device_login: { hold: true },
    },
  };
}

const GRANTED = [
  { name: "http_request", granted: true, outdated: false, text: "core text" },
  { name: "browser:fandeck", granted: true, outdated: false, text: "core text" },
];
const NOTHING = GRANTED.map((item) => ({ ...item, granted: false }));

/** What is wrong with the visible screen; empty when nothing is. Runs in the page. */
function problems() {
  const found = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1) {
    found.push(`the page scrolls sideways: ${root.scrollWidth} CSS px in a ${root.clientWidth} px window`);
  }
  const visible = (el) => {
    if (el.closest("[hidden]")) return false;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    return style.visibility !== "hidden" && style.display !== "none" && box.width > 0 && box.height > 0;
  };
  const describe = (el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}`;
  // Text for screen readers only (`.visually-hidden`: a clipped 1 px box) is meant to be unseen.
  const readerOnlyBox = (el) => {
    const box = el.getBoundingClientRect();
    return box.width <= 1 && box.height <= 1 && getComputedStyle(el).overflow === "hidden";
  };
  const forReadersOnly = (el) => {
    for (let at = el; at; at = at.parentElement) if (at.classList.contains("visually-hidden") || readerOnlyBox(at)) return true;
    return false;
  };
  for (const el of document.body.querySelectorAll("*")) {
    if (!visible(el) || forReadersOnly(el)) continue;
    const box = el.getBoundingClientRect();
    if (box.right > root.clientWidth + 1 || box.left < -1) {
      found.push(`${describe(el)} runs off the window (${Math.round(box.left)}..${Math.round(box.right)} px)`);
    }
    // Text that runs past the window even though its box does not (a long word, nowrap).
    for (const node of el.childNodes) {
      if (node.nodeType !== Node.TEXT_NODE || !node.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      const text = range.getBoundingClientRect();
      if (text.right > root.clientWidth + 1) {
        found.push(`${describe(el)}'s text runs off the window (to ${Math.round(text.right)} px)`);
        break;
      }
    }
    // Text cut by its own box (overflow hidden or ellipsis) is text the person cannot read.
    const style = getComputedStyle(el);
    if (el.scrollWidth > el.clientWidth + 1 && ["hidden", "clip"].includes(style.overflowX) && el.textContent.trim()) {
      found.push(`${describe(el)} cuts its text off`);
    }
  }
  const nameOf = (el) => {
    const labelledBy = el.getAttribute("aria-labelledby");
    if (labelledBy) {
      return labelledBy
        .split(/\s+/)
        .map((id) => document.getElementById(id)?.textContent ?? "")
        .join(" ")
        .trim();
    }
    const aria = el.getAttribute("aria-label");
    if (aria) return aria.trim();
    if (el.labels && el.labels.length) return [...el.labels].map((l) => l.textContent).join(" ").trim();
    if (el.tagName === "IMG") return (el.getAttribute("alt") ?? "").trim();
    return (el.textContent || el.getAttribute("title") || "").trim();
  };
  for (const el of document.querySelectorAll("button, a[href], input, select, textarea, img, meter, [role=button]")) {
    if (!visible(el)) continue;
    if (!nameOf(el)) found.push(`${describe(el)} has no name a screen reader can say`);
    const interactive = !["IMG", "METER"].includes(el.tagName);
    if (interactive && !el.disabled && el.tabIndex < 0) found.push(`${describe(el)} cannot be reached with Tab`);
  }
  return found;
}

const open = windowUnderTest();

async function check(page, name) {
  await screenshot(page, `zoom200-${name}`);
  assert.deepEqual(await page.evaluate(problems), [], `${name} at 200 %`);
}

/** Tab goes through every visible control of the screen, in order, without getting stuck. */
async function tabReachesEveryControl(page, name) {
  const controls = await page.evaluate(() =>
    [...document.querySelectorAll("button, a[href], input, select, textarea")]
      .filter((el) => !el.closest("[hidden]") && !el.disabled && el.getBoundingClientRect().width > 0)
      .map((el) => el.id || el.outerHTML.slice(0, 60)),
  );
  const reached = new Set();
  await page.evaluate(() => document.activeElement?.blur());
  // Summaries and links count as stops too, hence the margin; bounded either way.
  for (let i = 0; i < 2 * controls.length + 10 && !controls.every((c) => reached.has(c)); i++) {
    await page.keyboard.press("Tab");
    reached.add(await page.evaluate(() => document.activeElement?.id || document.activeElement?.outerHTML.slice(0, 60)));
  }
  const missing = controls.filter((c) => !reached.has(c));
  assert.deepEqual(missing, [], `${name}: not reached with Tab (reached: ${[...reached].join(", ")})`);
}

for (const lang of ["en", "fr"]) {
  test(`${lang}: sign-in and the device code at 200 % zoom`, async () => {
    const { page, errors } = await open(config(lang, snapshot(), NOTHING), { zoom: 2 });
    await page.waitForSelector("#login-view", { state: "visible" });
    await check(page, `${lang}-sign-in`);
    await tabReachesEveryControl(page, `${lang} sign-in`);
    await page.fill("#hub-url", HUB);
    await page.click("#login-submit");
    await page.waitForSelector("#device-panel", { state: "visible" });
    await check(page, `${lang}-device-code`);
    await tabReachesEveryControl(page, `${lang} device code`);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${lang}: consent, Home, Settings and Tasks at 200 % zoom`, async () => {
    const { page, errors } = await open(config(lang, busyHome, NOTHING), { zoom: 2 });
    await page.waitForSelector("#consent-view", { state: "visible" });
    await check(page, `${lang}-consent`);
    await tabReachesEveryControl(page, `${lang} consent`);
    await page.close();

    const home = await open(config(lang, busyHome, GRANTED), { zoom: 2 });
    await home.page.waitForSelector("#status-view", { state: "visible" });
    await home.page.waitForFunction(() => document.querySelector("#usage-data").textContent !== "");
    await check(home.page, `${lang}-home`);
    await tabReachesEveryControl(home.page, `${lang} home`);
    await home.page.click("#open-settings");
    await home.page.waitForSelector("#settings-view", { state: "visible" });
    await check(home.page, `${lang}-settings`);
    await tabReachesEveryControl(home.page, `${lang} settings`);
    assert.deepEqual([...errors, ...home.errors], []);
    await home.page.close();

    const tasks = await open(config(lang, busyHome, GRANTED), { zoom: 2 });
    await tasks.page.waitForSelector("#status-view", { state: "visible" });
    await tasks.page.click("#open-jobs");
    await tasks.page.waitForSelector("#jobs-view", { state: "visible" });
    await check(tasks.page, `${lang}-tasks`);
    await tabReachesEveryControl(tasks.page, `${lang} tasks`);
    assert.deepEqual(tasks.errors, []);
    await tasks.page.close();
  });
}

test("the check itself finds a control without a name and text that runs off the window", async () => {
  const { page } = await open(config("en", busyHome, GRANTED), { zoom: 2 });
  await page.waitForSelector("#status-view", { state: "visible" });
  await page.evaluate(() => {
    const view = document.querySelector("#status-view");
    const unnamed = document.createElement("button");
    unnamed.id = "planted-unnamed";
    view.append(unnamed);
    const wide = document.createElement("p");
    wide.id = "planted-wide";
    wide.style.whiteSpace = "nowrap";
    wide.textContent = "x".repeat(400);
    view.append(wide);
  });
  const found = await page.evaluate(problems);
  assert.ok(found.some((p) => p.includes("button#planted-unnamed has no name")), found.join("\n"));
  assert.ok(found.some((p) => p.includes("p#planted-wide's text runs off the window")), found.join("\n"));
  await page.close();
});
