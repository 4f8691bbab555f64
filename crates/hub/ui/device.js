// The device approval page (RFC 8628's verification URI). The person pastes the code shown
// by the device (or arrives with ?user_code= from the device's link or QR code) and an API
// key, sees which device asked and which creator it will join, then approves or denies.
// The key stays in this tab's sessionStorage (the operator page's slot) and only goes to
// this hub. Every value from the hub is written with textContent, never as HTML.
'use strict';

const KEY_SLOT = 'edgeHubApiKey';
const $ = (id) => document.getElementById(id);
let current = null; // the lookup answer being confirmed

function notice(text) {
  const el = $('notice');
  el.textContent = text || '';
  el.hidden = !text;
}

async function call(path, body) {
  const key = $('api-key').value.trim();
  const response = await fetch(path, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  let json = {};
  try { json = await response.json(); } catch (_) { /* an answer without a body */ }
  if (!response.ok) {
    const error = new Error(json.message || `the hub answered ${response.status}`);
    error.code = json.error;
    throw error;
  }
  return json;
}

function local(rfc3339) {
  const date = new Date(rfc3339);
  return isNaN(date) ? rfc3339 : date.toLocaleString();
}

function joinsText() {
  if (!current) return '';
  const creator = current.operator ? $('creator-id').value.trim() : current.creatorId;
  return creator ? `This device will join creator ${creator}.` : 'Type the creator this device joins.';
}

function show(section) {
  for (const id of ['ask', 'confirm', 'done']) $(id).hidden = id !== section;
}

async function lookup(event) {
  event.preventDefault();
  notice('');
  sessionStorage.setItem(KEY_SLOT, $('api-key').value.trim());
  try {
    current = await call('/v1/device/lookup', { user_code: $('user-code').value });
  } catch (e) {
    current = null;
    notice(e.message);
    return;
  }
  if (current.status !== 'pending') {
    finish('Already decided', `This code was already ${current.status === 'denied' ? 'denied' : 'approved'}. ` +
      'If the device is still waiting, start the sign-in again on it.');
    return;
  }
  $('device-name').textContent = current.name || '(no name given)';
  $('device-version').textContent = current.version || '(not given)';
  $('device-asked').textContent = local(current.requestedAt);
  $('device-code').textContent = current.userCode;
  $('operator-pick').hidden = !current.operator;
  $('joins').textContent = joinsText();
  show('confirm');
}

function finish(title, text) {
  $('done-title').textContent = title;
  $('done-text').textContent = text;
  show('done');
}

async function decide(approve) {
  notice('');
  const body = { user_code: current.userCode, approve };
  if (current.operator && approve) body.creatorId = $('creator-id').value.trim();
  try {
    const answer = await call('/v1/device/approve', body);
    if (answer.status === 'approved') {
      finish('Device approved', `The device joins creator ${answer.creatorId}. It finishes signing in by itself within a few seconds; you can close this page.`);
    } else {
      finish('Device denied', 'The device was refused and will say so. Nothing was added to your account.');
    }
  } catch (e) {
    notice(e.message);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const params = new URLSearchParams(window.location.search);
  if (params.get('user_code')) $('user-code').value = params.get('user_code');
  const saved = sessionStorage.getItem(KEY_SLOT);
  if (saved) $('api-key').value = saved;
  $('lookup-form').addEventListener('submit', lookup);
  $('creator-id').addEventListener('input', () => { $('joins').textContent = joinsText(); });
  $('approve').addEventListener('click', () => decide(true));
  $('deny').addEventListener('click', () => decide(false));
});
