// Test harness for the tray window: serves the BUILT ui/dist on 127.0.0.1 and drives the
// system Chromium through playwright-core, with Tauri's IPC replaced by an in-page mock.
// No browser download: playwright-core only, pointed at /usr/bin/chromium.
import { before, after } from "node:test";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { readFile, mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { extname, join, normalize, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..");
export const distDir = join(repoRoot, "ui", "dist");
export const screenshotDir = process.env.UI_SCREENSHOT_DIR ?? join(repoRoot, "target", "ui-screenshots");

// playwright-core is a dev dependency of ui/, not of this folder.
const require = createRequire(join(repoRoot, "ui", "package.json"));
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

export async function startServer() {
  if (!existsSync(join(distDir, "index.html"))) {
    throw new Error(`ui/dist is not built: run \`npm run build --prefix ui\` first (${distDir})`);
  }
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const file = normalize(join(distDir, path === "/" ? "index.html" : path));
    if (!file.startsWith(distDir)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((ok) => server.close(ok)) };
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * Runs in the page before any app script. Stands in for what Tauri injects: `invoke`,
 * `transformCallback`, and the event plugin (`plugin:event|listen`/`unlisten`) so that
 * `listen()` from @tauri-apps/api works. Commands answer from `config`:
 *   config.state          snapshot returned by get_state
 *   config.commands[name] {resolve: value} | {reject: {code, message}} | {hold: true}
 * A held command answers only when the test calls window.__release(name, {resolve}|{reject})
 * (a long wait, such as the device sign-in's). Every call is recorded in window.__ipcCalls; window.__emit(event, payload) plays a
 * Rust-side emit.
 */
function tauriMock(config) {
  const callbacks = new Map();
  const listeners = new Map(); // event name -> [callback id]
  let nextId = 1;
  window.__ipcCalls = [];
  window.__held = {};
  window.__release = (cmd, outcome) => {
    const settle = window.__held[cmd];
    if (!settle) return false;
    delete window.__held[cmd];
    settle(outcome);
    return true;
  };

  function transformCallback(callback, once = false) {
    const id = nextId++;
    callbacks.set(id, (data) => {
      if (once) callbacks.delete(id);
      return callback && callback(data);
    });
    return id;
  }

  async function invoke(cmd, args = {}) {
    window.__ipcCalls.push({ cmd, args: JSON.parse(JSON.stringify(args ?? {})) });
    if (cmd === "plugin:event|listen") {
      if (!listeners.has(args.event)) listeners.set(args.event, []);
      listeners.get(args.event).push(args.handler);
      return args.handler;
    }
    if (cmd === "plugin:event|unlisten") {
      const ids = listeners.get(args.event) ?? [];
      listeners.set(args.event, ids.filter((id) => id !== args.eventId));
      return null;
    }
    if (cmd === "get_state") return config.state;
    const answer = config.commands?.[cmd];
    if (!answer) throw { code: "not_mocked", message: `command ${cmd} is not mocked` };
    if (answer.hold) {
      const outcome = await new Promise((ok) => {
        window.__held[cmd] = ok;
      });
      if (outcome.reject) throw outcome.reject;
      return outcome.resolve;
    }
    // Let the UI show its in-flight state for a moment, like a real round trip.
    await new Promise((ok) => setTimeout(ok, 20));
    if (answer.reject) throw answer.reject;
    return answer.resolve;
  }

  window.__TAURI_INTERNALS__ = {
    invoke,
    transformCallback,
    unregisterCallback: (id) => callbacks.delete(id),
    callbacks,
    metadata: { currentWindow: { label: "main" }, currentWebview: { windowLabel: "main", label: "main" } },
  };
  window.__TAURI_EVENT_PLUGIN_INTERNALS__ = {
    unregisterListener: (_event, id) => callbacks.delete(id),
  };
  window.__emit = (event, payload) => {
    for (const id of listeners.get(event) ?? []) {
      const cb = callbacks.get(id);
      if (cb) cb({ event, id, payload });
    }
    return (listeners.get(event) ?? []).length;
  };
}

/** The tray window's size in CSS pixels at 100 % zoom. */
export const WINDOW = { width: 420, height: 560 };

/** Opens the window's page with the IPC mock configured; waits until the app settled.
 * `zoom` 2 is the person's 200 % zoom: the same window, half as many CSS pixels; `locale`
 * is the webview's language (`fr-FR`). */
export async function openApp(browser, baseUrl, config, { zoom = 1, locale } = {}) {
  const page = await browser.newPage({
    viewport: { width: Math.round(WINDOW.width / zoom), height: Math.round(WINDOW.height / zoom) },
    deviceScaleFactor: zoom,
    ...(locale ? { locale } : {}),
  });
  const errors = [];
  page.on("pageerror", (err) => errors.push(err));
  await page.addInitScript(tauriMock, config);
  await page.goto(baseUrl);
  await page.waitForSelector("#boot", { state: "hidden" });
  return { page, errors };
}

export async function screenshot(page, name) {
  await mkdir(screenshotDir, { recursive: true });
  const path = join(screenshotDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** No caps of the person's own. */
export const NO_CAPS = { jobsPerHour: null, messagesPerHour: null, bytesPerDay: null };

/** `get_settings`' answer for a window in `lang` with nothing set. */
export function plainSettings(lang) {
  return {
    caps: NO_CAPS,
    quietHours: null,
    uploadsDir: null,
    startAtLogin: false,
    language: lang,
    effectiveLanguage: lang,
    sites: [],
  };
}

export function snapshot(overrides = {}) {
  return {
    loggedIn: false,
    hubUrl: null,
    agentId: null,
    creatorId: null,
    connection: "offline",
    paused: false,
    busy: 0,
    lastError: null,
    keychainBackend: "secret-service",
    recentJobs: [],
    browser: null,
    ...overrides,
  };
}

/**
 * For a test file: serves ui/dist and starts Chromium once for the file (node:test's
 * before/after), and returns `open(config, options)`, which is `openApp` on them.
 */
export function windowUnderTest() {
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
  return (config, options) => openApp(browser, server.url, config, options);
}

/** What the tray's `start_device_login` answers for a hub at `hub`: the code WDJB-MJHT and a
 * one-square QR code (the window shows whatever picture it is given). */
export function deviceSignIn(hub, qrSvg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1"><rect width="1" height="1"/></svg>') {
  return {
    hubUrl: hub,
    userCode: "WDJB-MJHT",
    verificationUri: `${hub}/device`,
    verificationUriComplete: `${hub}/device?user_code=WDJB-MJHT`,
    expiresInSecs: 600,
    intervalSecs: 5,
    qrSvg,
  };
}
