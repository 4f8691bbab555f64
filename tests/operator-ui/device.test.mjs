// The hub's device approval page (/device, RFC 8628's verification URI) in headless
// Chromium, against a real `edge-hub` process (HUB_BIN, default target/debug/edge-hub) on a
// temporary SQLite file. A simulated agent asks for a device code over HTTP and polls the
// token endpoint's device grant as the real agent does; the page opens at the complete
// verification URI, the person pastes a creator key, sees the device (its name written as
// text, never HTML) and the creator it joins, and approves; the agent's next poll is
// enrolled. Then: an operator key picks the creator, a deny, and an unknown code.
// Screenshots: target/operator-ui/device-*.png.
//
// Bounded: every wait has a deadline; the hub and browser are stopped in `after`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { SHOTS, openBrowser, startHub, testDatabase, until } from './harness.mjs';

const CREATOR = 'ui-device-creator';
const OTHER = 'ui-device-other';
const GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const HOSTILE_NAME = '<img src=x onerror="window.__owned=1">studio';

let cli, dir, dbUrl, hub, base, operatorKey, creatorKey, browser, page;

async function post(path, body) {
  const response = await fetch(base + path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.status, json: await response.json() };
}

/// A device asking to sign in: its code, and a poll that waits the interval first.
async function startDevice(name) {
  const { publicKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const { status, json } = await post('/v1/agent/device/code', { publicKey: raw.toString('base64'), name, version: 'agent-sim-1.0' });
  assert.equal(status, 200, JSON.stringify(json));
  const poll = async () => {
    await new Promise((r) => setTimeout(r, json.interval * 1000 + 50));
    return post('/v1/agent/token', { grant_type: GRANT, device_code: json.device_code });
  };
  return { ...json, poll };
}

before(async () => {
  ({ dir, dbUrl, cli } = testDatabase('edge-device-ui-'));
  operatorKey = cli('api-key', 'create', '--name', 'ui-operator');
  creatorKey = cli('api-key', 'create', '--name', 'ui-creator', '--creator', CREATOR);
  cli('api-key', 'create', '--name', 'ui-other', '--creator', OTHER);
  ({ hub, base } = await startHub(dbUrl, ['--device-code-interval-secs', '1']));
  ({ browser, page } = await openBrowser({ width: 900, height: 760 }));
});

after(async () => {
  await browser?.close();
  hub?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('device page: a creator key sees the device and its creator, approves, and the device is enrolled once', async () => {
  const device = await startDevice(HOSTILE_NAME);
  assert.equal(device.verification_uri, base + '/device');
  assert.equal((await device.poll()).json.error, 'authorization_pending');

  await page.goto(device.verification_uri_complete);
  assert.equal(await page.getByTestId('user-code').inputValue(), device.user_code, 'the code comes prefilled');
  await page.getByTestId('api-key').fill(creatorKey);
  await page.screenshot({ path: join(SHOTS, 'device-1-ask.png'), fullPage: true });
  await page.getByTestId('lookup').click();
  await page.getByTestId('confirm').waitFor();
  assert.equal(await page.getByTestId('device-name').innerText(), HOSTILE_NAME, 'the name is shown as text');
  assert.equal(await page.evaluate(() => window.__owned), undefined, 'nothing from the device ran');
  assert.equal(await page.getByTestId('device-version').innerText(), 'agent-sim-1.0');
  assert.equal(await page.getByTestId('device-code').innerText(), device.user_code);
  assert.equal(await page.getByTestId('joins').innerText(), `This device will join creator ${CREATOR}.`);
  await page.screenshot({ path: join(SHOTS, 'device-2-confirm.png'), fullPage: true });
  await page.getByTestId('approve').click();
  await page.getByTestId('done').waitFor();
  assert.match(await page.getByTestId('done-text').innerText(), new RegExp(`joins creator ${CREATOR}`));
  await page.screenshot({ path: join(SHOTS, 'device-3-approved.png'), fullPage: true });

  const enrolled = await device.poll();
  assert.equal(enrolled.status, 200, JSON.stringify(enrolled.json));
  assert.equal(enrolled.json.creatorId, CREATOR);
  assert.match(enrolled.json.agentId, /^agt_/);
  assert.equal((await device.poll()).json.error, 'expired_token', 'redeemed once');
});

test('device page: an operator key picks the creator; deny; an unknown code is a sentence', async () => {
  const device = await startDevice('fleet-7');
  await page.goto(base + '/device');
  await page.getByTestId('user-code').fill(device.user_code.toLowerCase().replace('-', ' '));
  await page.getByTestId('api-key').fill(operatorKey);
  await page.getByTestId('lookup').click();
  await page.getByTestId('confirm').waitFor();
  assert.equal(await page.getByTestId('joins').innerText(), 'Type the creator this device joins.');
  await page.getByTestId('creator-id').fill('no-such-creator');
  await page.getByTestId('approve').click();
  await until('the unknown creator notice', async () => /no creator no-such-creator/.test(await page.getByTestId('notice').innerText()));
  await page.getByTestId('creator-id').fill(OTHER);
  assert.equal(await page.getByTestId('joins').innerText(), `This device will join creator ${OTHER}.`);
  await page.getByTestId('approve').click();
  await page.getByTestId('done').waitFor();
  assert.equal((await device.poll()).json.creatorId, OTHER);

  const refused = await startDevice('not-mine');
  await page.goto(refused.verification_uri_complete);
  await page.getByTestId('lookup').click(); // the key is remembered for this tab
  await page.getByTestId('confirm').waitFor();
  await page.getByTestId('deny').click();
  await page.getByTestId('done').waitFor();
  assert.match(await page.getByTestId('done-text').innerText(), /refused/);
  assert.equal((await refused.poll()).json.error, 'access_denied');

  await page.goto(base + '/device?user_code=ABCD-EFGH');
  await page.getByTestId('lookup').click();
  await until('the unknown code notice', async () => /start the sign-in again on the device/.test(await page.getByTestId('notice').innerText()));
  await page.screenshot({ path: join(SHOTS, 'device-4-unknown-code.png'), fullPage: true });
  assert.equal(await page.getByTestId('confirm').isHidden(), true);
});
