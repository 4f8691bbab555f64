// What the operator-page tests share: where the hub binary, Chromium and the screenshots
// are, a bounded wait, the hub's CLI on a test database, a real `edge-hub serve` on
// 127.0.0.1:0 (its URL read from its "listening on" line), and headless Chromium.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const HUB_BIN = process.env.HUB_BIN ?? join(ROOT, 'target/debug/edge-hub');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'target/operator-ui');

/// Polls `check` every 100 ms until it is truthy; fails after `timeoutMs` naming `what`.
export async function until(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try { if (await check()) return; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
}

/// A temporary folder and SQLite database for one test file, and the hub CLI on it.
export function testDatabase(prefix) {
  mkdirSync(SHOTS, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const dbUrl = 'sqlite://' + join(dir, 'hub.db');
  const cli = (...args) => execFileSync(HUB_BIN, ['--database-url', dbUrl, ...args], { encoding: 'utf8' }).trim();
  return { dir, dbUrl, cli };
}

/// `edge-hub serve` on `dbUrl` with `extraArgs`; resolves to { hub, base } once it listens.
export async function startHub(dbUrl, extraArgs = []) {
  const hub = spawn(HUB_BIN, ['--database-url', dbUrl, 'serve', '--listen', '127.0.0.1:0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, EDGE_HUB_LOG: 'warn' },
  });
  hub.stderr.on('data', () => {});
  const base = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error('hub did not start in 30 s')), 30000);
    hub.stdout.on('data', (chunk) => {
      const match = /listening on (http:\/\/\S+)/.exec(String(chunk));
      if (match) { clearTimeout(timer); resolveUrl(match[1]); }
    });
    hub.once('exit', (code) => reject(new Error('hub exited with ' + code)));
  });
  return { hub, base };
}

/// Headless Chromium and one page whose script errors fail the test.
export async function openBrowser(viewport) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport });
  page.on('pageerror', (e) => { throw e; });
  return { browser, page };
}
