// Operator page of the Edge-Agent hub. Plain browser JavaScript, no build step: the hub
// serves this file as is. It talks only to this hub's /v1 API with the operator key the
// person typed in, kept in sessionStorage (gone when the tab closes). Every value from the
// API is put into the page with textContent, never as HTML.
'use strict';

const KEY_SLOT = 'edgeHubApiKey';
const PAGE_SIZE = 50;

// Every endpoint the page uses, in one place.
const API = {
  agents: () => '/v1/agents',
  jobs: (params) => '/v1/jobs?' + params.toString(),
  job: (id) => '/v1/jobs/' + encodeURIComponent(id),
  attempts: (id) => '/v1/jobs/' + encodeURIComponent(id) + '/attempts',
  dead: (params) => '/v1/dead-letter?' + params.toString(),
  redrives: () => '/v1/dead-letter/redrive',
  redrive: (id) => '/v1/dead-letter/redrives/' + encodeURIComponent(id),
  limits: (creator) => '/v1/creators/' + encodeURIComponent(creator) + '/limits',
};

const $ = (id) => document.getElementById(id);

function key() { return sessionStorage.getItem(KEY_SLOT); }

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
}

async function call(method, path, body) {
  const headers = { Authorization: 'Bearer ' + key() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    if (response.status === 401) signOut('The hub did not accept that API key.');
    throw new ApiError(response.status, json);
  }
  return json;
}

function notice(message, isError) {
  const el = $('notice');
  el.textContent = message;
  el.className = isError ? 'error' : '';
  el.hidden = !message;
}

function fail(error) { notice(error.message || String(error), true); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? '' : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function badge(state) { const b = el('span', state, 'badge s-' + state); b.dataset.status = state; return b; }

function when(iso) {
  if (!iso) return '—';
  const at = new Date(iso);
  const secs = Math.round((Date.now() - at.getTime()) / 1000);
  const ago = secs < 60 ? secs + ' s ago' : secs < 3600 ? Math.round(secs / 60) + ' min ago' : Math.round(secs / 3600) + ' h ago';
  const span = el('span', ago);
  span.title = at.toISOString();
  return span;
}

// ---- tabs -----------------------------------------------------------------------------

const loaders = { agents: loadAgents, jobs: () => loadJobs(false), dead: loadDead, limits: () => {} };

function show(tab) {
  for (const section of document.querySelectorAll('section.tab')) section.hidden = section.id !== tab;
  for (const button of document.querySelectorAll('#tabs button')) button.setAttribute('aria-selected', String(button.dataset.tab === tab));
  location.hash = tab;
  notice('');
  loaders[tab]();
}

async function signIn(value) {
  sessionStorage.setItem(KEY_SLOT, value.trim());
  // Check the key before showing anything, whichever tab the address names.
  try { await call('GET', API.agents()); } catch (e) { if (key()) fail(e); return; }
  $('login').hidden = true;
  $('tabs').hidden = false;
  $('sign-out').hidden = false;
  const wanted = location.hash.slice(1);
  show(loaders[wanted] ? wanted : 'agents');
}

function signOut(message) {
  sessionStorage.removeItem(KEY_SLOT);
  for (const section of document.querySelectorAll('section.tab')) section.hidden = true;
  $('tabs').hidden = true;
  $('sign-out').hidden = true;
  $('login').hidden = false;
  notice(message || '', Boolean(message));
}

// ---- agents ---------------------------------------------------------------------------

async function loadAgents() {
  try {
    const { agents } = await call('GET', API.agents());
    const body = $('agents-rows');
    body.replaceChildren();
    for (const a of agents) {
      const tr = row([el('code', a.agentId), a.name || '', a.creatorId, badge(a.online ? 'online' : 'offline'),
        when(a.lastHeartbeatAt), a.version || '', (a.labels || []).join(', '), tunnelCell(a.tunnel)]);
      tr.dataset.agentId = a.agentId;
      body.appendChild(tr);
    }
    if (!agents.length) body.appendChild(row([el('span', 'No agents enrolled yet.', 'muted')]));
  } catch (e) { fail(e); }
}

// The agent's tunnel: open (on whichever instance holds it) or not, and the bytes it
// carried through this instance today.
function tunnelCell(tunnel) {
  if (!tunnel) return '—';
  const cell = el('span', `${tunnel.open ? 'open' : 'closed'} · ${humanBytes(tunnel.bytesToday)} today`);
  cell.dataset.testid = 'agent-tunnel';
  if (tunnel.instanceId) cell.title = `held by instance ${tunnel.instanceId}; bytes counted on this instance`;
  return cell;
}

function humanBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

// ---- jobs -----------------------------------------------------------------------------

// The list is paged by `before` = the last job id shown (`nextBefore` of the answer).
let jobsCursor = null;

function filterParams(form, extra) {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (String(value).trim()) params.set(name, String(value).trim());
  for (const [name, value] of Object.entries(extra || {})) if (value !== null && value !== undefined) params.set(name, value);
  return params;
}

async function loadJobs(more) {
  try {
    const params = filterParams($('jobs-filter'), { limit: PAGE_SIZE, before: more ? jobsCursor : null });
    const page = await call('GET', API.jobs(params));
    const body = $('jobs-rows');
    if (!more) body.replaceChildren();
    for (const job of page.jobs) {
      const link = el('a', job.id);
      link.addEventListener('click', () => openJob(job.id));
      const tr = row([link, job.type, badge(job.status), job.creatorId, job.agentId || '', job.attempts,
        when(job.createdAt), when(job.updatedAt)]);
      tr.dataset.jobId = job.id;
      tr.dataset.status = job.status;
      body.appendChild(tr);
    }
    jobsCursor = page.nextBefore || null;
    $('jobs-more').hidden = !jobsCursor;
    if (!more && !page.jobs.length) body.appendChild(row([el('span', 'No jobs match.', 'muted')]));
  } catch (e) { fail(e); }
}

async function openJob(id) {
  try {
    const job = await call('GET', API.job(id));
    $('job-detail-title').textContent = 'Job ' + job.id;
    const fields = $('job-detail-fields');
    fields.replaceChildren();
    const shown = ['status', 'type', 'creatorId', 'agentId', 'attempts', 'maxReceiveCount', 'priority', 'runAt',
      'labels', 'errorCode', 'createdAt', 'updatedAt', 'finishedAt'];
    for (const name of shown) {
      if (job[name] === undefined || job[name] === null) continue;
      fields.appendChild(el('dt', name));
      const value = Array.isArray(job[name]) ? job[name].join(', ') : job[name];
      const dd = el('dd', name === 'status' ? null : value);
      if (name === 'status') dd.appendChild(badge(value));
      fields.appendChild(dd);
    }
    $('job-detail-raw').textContent = JSON.stringify(job, null, 2);
    const attempts = $('job-detail-attempts');
    attempts.replaceChildren();
    let history = Array.isArray(job.history) ? job.history : null;
    if (!history) {
      try { const answer = await call('GET', API.attempts(id)); history = answer && (answer.attempts || answer); } catch (_) { history = null; }
    }
    for (const a of Array.isArray(history) ? history : []) {
      attempts.appendChild(row([a.leaseToken, a.agentId, when(a.leasedAt), when(a.endedAt), a.outcome || 'held']));
    }
    $('job-detail').hidden = false;
    $('job-detail').dataset.jobId = job.id;
    $('job-detail').dataset.status = job.status;
  } catch (e) { fail(e); }
}

// ---- dead letter ----------------------------------------------------------------------

async function loadDead() {
  try {
    const params = filterParams($('dead-filter'), { limit: 200 });
    const page = await call('GET', API.dead(params));
    const body = $('dead-rows');
    body.replaceChildren();
    for (const job of page.jobs) {
      const button = el('button', 'Redrive');
      button.type = 'button';
      button.dataset.testid = 'redrive-' + job.id;
      button.setAttribute('data-testid', 'redrive-' + job.id);
      const error = job.errorCode || (job.error && job.error.code) || '';
      // A redrive moves dead jobs by filter; this one names the job's queue, creator, error
      // and the instant it died, which in practice is this job alone.
      const died = job.finishedAt || job.updatedAt;
      const filter = { type: job.type, creatorId: job.creatorId, deadFrom: died, deadTo: died };
      if (error) filter.errorCode = error;
      button.addEventListener('click', () => redrive(filter, button));
      const tr = row([el('code', job.id), job.type, job.creatorId, job.attempts, error, when(job.finishedAt || job.updatedAt), button]);
      tr.dataset.jobId = job.id;
      body.appendChild(tr);
    }
    if (!page.jobs.length) body.appendChild(row([el('span', 'The dead-letter list is empty.', 'muted')]));
  } catch (e) { fail(e); }
}

async function redrive(filter, button) {
  if (button) button.disabled = true;
  try {
    const started = await call('POST', API.redrives(), filter);
    const progress = $('redrive-progress');
    progress.hidden = false;
    let move = started.redrive || started;
    for (let i = 0; i < 600 && move.status === 'running'; i++) {
      progress.textContent = 'Redrive ' + move.id + ': ' + move.moved + ' of ' + move.total + ' moved…';
      await new Promise((r) => setTimeout(r, 500));
      move = await call('GET', API.redrive(move.id));
    }
    progress.textContent = 'Redrive ' + move.id + ' ' + move.status + ': ' + move.moved + ' of ' + move.total + ' moved back to pending.';
    progress.dataset.status = move.status;
    await loadDead();
  } catch (e) {
    if (button) button.disabled = false;
    fail(e);
  }
}

// ---- creator limits -------------------------------------------------------------------

function limitRow(jobType, perHour) {
  const type = Object.assign(document.createElement('input'), { name: 'jobType', value: jobType || '', placeholder: 'http_request' });
  const count = Object.assign(document.createElement('input'), { name: 'perHour', type: 'number', min: '0', value: perHour ?? '' });
  const remove = el('button', 'Remove');
  remove.type = 'button';
  const tr = row([type, count, remove]);
  remove.addEventListener('click', () => tr.remove());
  $('limits-rows').appendChild(tr);
}

async function loadLimits(creator) {
  try {
    const limits = await call('GET', API.limits(creator));
    const form = $('limits-form');
    form.dataset.creatorId = creator;
    form.elements.maxConcurrentJobs.value = limits.maxConcurrentJobs ?? '';
    $('limits-rows').replaceChildren();
    for (const [jobType, perHour] of Object.entries(limits.maxJobsPerHour || {})) limitRow(jobType, perHour);
    form.hidden = false;
  } catch (e) { fail(e); }
}

async function saveLimits(event) {
  event.preventDefault();
  const form = $('limits-form');
  const maxConcurrent = form.elements.maxConcurrentJobs.value.trim();
  const maxJobsPerHour = {};
  for (const tr of $('limits-rows').children) {
    const [type, count] = tr.querySelectorAll('input');
    if (type.value.trim() && count.value.trim()) maxJobsPerHour[type.value.trim()] = Number(count.value);
  }
  try {
    await call('PUT', API.limits(form.dataset.creatorId), { maxConcurrentJobs: maxConcurrent ? Number(maxConcurrent) : null, maxJobsPerHour });
    notice('Limits of ' + form.dataset.creatorId + ' saved.');
    await loadLimits(form.dataset.creatorId);
    notice('Limits of ' + form.dataset.creatorId + ' saved.');
  } catch (e) { fail(e); }
}

// ---- wiring ---------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (event) => { event.preventDefault(); signIn($('api-key').value); });
  $('sign-out').addEventListener('click', () => signOut());
  for (const button of document.querySelectorAll('#tabs button')) button.addEventListener('click', () => show(button.dataset.tab));
  $('agents-refresh').addEventListener('click', loadAgents);
  $('jobs-filter').addEventListener('submit', (event) => { event.preventDefault(); loadJobs(false); });
  $('jobs-more').addEventListener('click', () => loadJobs(true));
  $('job-detail-close').addEventListener('click', () => { $('job-detail').hidden = true; });
  $('dead-filter').addEventListener('submit', (event) => { event.preventDefault(); loadDead(); });
  $('dead-redrive-all').addEventListener('click', (event) => {
    const filter = {};
    for (const [name, value] of new FormData($('dead-filter'))) if (String(value).trim()) filter[name] = String(value).trim();
    redrive(filter, event.currentTarget);
  });
  $('limits-load').addEventListener('submit', (event) => { event.preventDefault(); loadLimits(event.currentTarget.elements.creatorId.value.trim()); });
  $('limits-add').addEventListener('click', () => limitRow('', ''));
  $('limits-form').addEventListener('submit', saveLimits);
  if (key()) signIn(key()); else signOut();
});
