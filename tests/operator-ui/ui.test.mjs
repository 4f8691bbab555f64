// The hub's operator page in headless Chromium, against a real `edge-hub` process
// (HUB_BIN, default target/debug/edge-hub) on a temporary SQLite file. A simulated agent
// (a WebSocket client here, enrolled through the real enroll → challenge → Ed25519 token
// flow) fails one job with NETWORK so it goes dead (maxReceiveCount 1), and succeeds it
// the second time. In the page: sign in, see the agent, filter jobs, open a job, redrive
// the dead job and see it succeed, edit creator limits. Screenshots: target/operator-ui/.
//
// Bounded: every wait has a deadline; the hub and browser are stopped in `after`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, sign } from 'node:crypto';
import WebSocket from 'ws';
import { SHOTS, openBrowser, startHub, testDatabase, until } from './harness.mjs';

const CREATOR = 'ui-creator';
const OTHER = 'ui-other-creator';

let cli, dir, dbUrl, hub, base, apiKey, agent, browser, page;

async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: 'Bearer ' + apiKey, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

async function post(path, body) {
  const response = await fetch(base + path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const json = await response.json();
  if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

/// A simulated agent: real enrollment and device-key token, then the WebSocket protocol.
async function startAgent(enrollmentToken) {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const { agentId } = await post('/v1/agent/enroll', { token: enrollmentToken, publicKey: raw.toString('base64'), name: 'ui-sim', version: 'agent-sim-1.0' });
  const { nonce } = await post('/v1/agent/challenge', { agentId });
  const signature = sign(null, Buffer.from(`edge-agent/token/v1\n${agentId}\n${nonce}`), privateKey).toString('base64');
  const { token } = await post('/v1/agent/token', { agentId, nonce, signature });
  const ws = new WebSocket(base.replace('http://', 'ws://') + '/v1/agent/ws?token=' + token);
  const seen = new Map();
  await new Promise((resolveOpen, reject) => { ws.once('open', resolveOpen); ws.once('error', reject); });
  const send = (frame) => ws.send(JSON.stringify(frame));
  const hb = setInterval(() => send({ t: 'hb', v: 'agent-sim-1.0', ts: Math.floor(Date.now() / 1000) }), 1000);
  ws.on('message', (data) => {
    const frame = JSON.parse(String(data));
    if (frame.t !== 'job_assign') return;
    const id = frame.job.jobId;
    const times = (seen.get(id) ?? 0) + 1;
    seen.set(id, times);
    send({ t: 'job_ack', id });
    // A job whose URL says fail-once fails with a retryable code the first time only.
    if (String(frame.job.payload.url).includes('/fail-once/') && times === 1) {
      send({ t: 'job_result', id, status: 'error', err: { code: 'NETWORK', message: 'simulated connection reset' } });
    } else {
      send({ t: 'job_result', id, status: 'ok', data: { statusCode: 200, headers: {}, body: 'ok', isBase64Encoded: false } });
    }
  });
  send({ t: 'hello', protocol: 1, v: 'agent-sim-1.0', capabilities: ['http_request'], slots: 2, labels: ['ui-test'] });
  return { agentId, ws, seen, stop: () => { clearInterval(hb); ws.close(); } };
}

before(async () => {
  ({ dir, dbUrl, cli } = testDatabase('edge-operator-ui-'));
  apiKey = cli('api-key', 'create', '--name', 'ui-test');
  const enrollmentToken = cli('enroll-token', 'create', '--creator', CREATOR);
  ({ hub, base } = await startHub(dbUrl, ['--hb-interval-secs', '1']));
  agent = await startAgent(enrollmentToken);
  ({ browser, page } = await openBrowser({ width: 1280, height: 860 }));
});

after(async () => {
  await browser?.close();
  agent?.stop();
  hub?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('operator page: agents, job filters and detail, redrive a dead job, creator limits', async () => {
  // Traffic: three jobs that succeed, one that dies, one that waits for an absent creator.
  const ok = [];
  for (let i = 0; i < 3; i++) {
    ok.push((await api('POST', '/v1/jobs', { type: 'http_request', creatorId: CREATOR, payload: { url: `http://127.0.0.1:9/ok/${i}` } })).id);
  }
  const doomed = (await api('POST', '/v1/jobs', { type: 'http_request', creatorId: CREATOR, maxReceiveCount: 1, payload: { url: 'http://127.0.0.1:9/fail-once/1' } })).id;
  const waiting = (await api('POST', '/v1/jobs', { type: 'http_request', creatorId: OTHER, payload: { url: 'http://127.0.0.1:9/later' } })).id;
  await until('the doomed job to be dead', async () => (await api('GET', '/v1/jobs/' + doomed)).status === 'dead');
  await until('three jobs to succeed', async () => {
    for (const id of ok) if ((await api('GET', '/v1/jobs/' + id)).status !== 'succeeded') return false;
    return true;
  });

  // Sign in: the key goes to sessionStorage and the agents tab opens.
  await page.goto(base + '/');
  await page.getByTestId('api-key').fill(apiKey);
  await page.getByTestId('login-submit').click();
  const agentRow = page.locator(`#agents-rows tr[data-agent-id="${agent.agentId}"]`);
  await agentRow.waitFor();
  assert.match(await agentRow.innerText(), /online/);
  assert.match(await agentRow.innerText(), /agent-sim-1\.0/);
  // The tunnel column: this simulated agent opened none (its state with one: crates/hub/tests/tunnel.rs).
  assert.match(await page.getByTestId('agents-table').locator('thead').innerText(), /Tunnel/i);
  assert.equal(await agentRow.getByTestId('agent-tunnel').count(), 0);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('edgeHubApiKey')), apiKey);
  await page.screenshot({ path: join(SHOTS, '1-agents.png'), fullPage: true });

  // Jobs: filter by status, then by creator, then open a job.
  await page.getByTestId('tab-jobs').click();
  await page.locator('#jobs-rows tr[data-job-id]').first().waitFor();
  assert.equal(await page.locator('#jobs-rows tr[data-job-id]').count(), 5);
  await page.getByTestId('filter-status').selectOption('succeeded');
  await page.getByTestId('filter-apply').click();
  await until('the status filter', async () => (await page.locator('#jobs-rows tr[data-job-id]').count()) === 3);
  for (const status of await page.locator('#jobs-rows tr[data-job-id]').evaluateAll((rows) => rows.map((r) => r.dataset.status))) {
    assert.equal(status, 'succeeded');
  }
  await page.getByTestId('filter-status').selectOption('');
  await page.getByTestId('filter-creator').fill(OTHER);
  await page.getByTestId('filter-apply').click();
  await until('the creator filter', async () => (await page.locator('#jobs-rows tr[data-job-id]').count()) === 1);
  assert.equal(await page.locator('#jobs-rows tr[data-job-id]').getAttribute('data-job-id'), waiting);
  await page.locator(`#jobs-rows tr[data-job-id="${waiting}"] a`).click();
  await page.getByTestId('job-detail').waitFor();
  assert.equal(await page.getByTestId('job-detail').getAttribute('data-status'), 'pending');
  await page.screenshot({ path: join(SHOTS, '2-jobs-filtered-detail.png'), fullPage: true });

  // Dead letter: the dead job is listed; redrive it; the agent succeeds the second time.
  await page.getByTestId('tab-dead').click();
  const deadRow = page.locator(`#dead-rows tr[data-job-id="${doomed}"]`);
  await deadRow.waitFor();
  assert.match(await deadRow.innerText(), /NETWORK/);
  await page.screenshot({ path: join(SHOTS, '3-dead-letter.png'), fullPage: true });
  await page.getByTestId('redrive-' + doomed).click();
  await until('the redrive to complete', async () => (await page.getByTestId('redrive-progress').getAttribute('data-status')) === 'completed');
  await until('the redriven job to succeed', async () => (await api('GET', '/v1/jobs/' + doomed)).status === 'succeeded');
  assert.equal(agent.seen.get(doomed), 2, 'the job was delivered once before and once after the redrive');
  await page.getByTestId('dead-apply').click();
  await until('the dead-letter list to empty', async () => (await page.locator('#dead-rows tr[data-job-id]').count()) === 0);
  await page.getByTestId('tab-jobs').click();
  await page.getByTestId('filter-creator').fill('');
  await page.getByTestId('filter-status').selectOption('succeeded');
  await page.getByTestId('filter-apply').click();
  await until('the redriven job among the succeeded', async () => (await page.locator(`#jobs-rows tr[data-job-id="${doomed}"]`).count()) === 1);
  await page.locator(`#jobs-rows tr[data-job-id="${doomed}"] a`).click();
  await until('the detail of the redriven job', async () => (await page.getByTestId('job-detail').getAttribute('data-job-id')) === doomed);
  assert.equal(await page.getByTestId('job-detail').getAttribute('data-status'), 'succeeded');
  await page.screenshot({ path: join(SHOTS, '4-redriven-succeeded.png'), fullPage: true });

  // Creator limits: load, edit, save, and read back through the API.
  await page.getByTestId('tab-limits').click();
  await page.getByTestId('limits-creator').fill(CREATOR);
  await page.getByTestId('limits-load').click();
  await page.getByTestId('limits-form').waitFor();
  await page.getByTestId('limits-max-concurrent').fill('5');
  await page.getByTestId('limits-add').click();
  await page.locator('#limits-rows tr:last-child input[name="jobType"]').fill('http_request');
  await page.locator('#limits-rows tr:last-child input[name="perHour"]').fill('120');
  await page.getByTestId('limits-save').click();
  await until('the limits to be saved', async () => /saved/.test(await page.getByTestId('notice').innerText()));
  const limits = await api('GET', `/v1/creators/${CREATOR}/limits`);
  assert.equal(limits.maxConcurrentJobs, 5);
  assert.equal(limits.maxJobsPerHour.http_request, 120);
  await page.screenshot({ path: join(SHOTS, '5-creator-limits.png'), fullPage: true });

  // A wrong key sends the person back to the sign-in form.
  await page.evaluate(() => sessionStorage.setItem('edgeHubApiKey', 'ehk_wrong'));
  await page.reload();
  await page.getByTestId('login').waitFor();
  assert.match(await page.getByTestId('notice').innerText(), /did not accept/);
});
