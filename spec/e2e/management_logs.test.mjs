// Issue 13, logs: logging-to-file switched on and off over the management API,
// GET /logs and DELETE /logs in CLIProxyAPI's shapes, and no key or token in
// any log file the run wrote.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SECRET = 'logs-e2e-secret-0193';
const CLIENT = 'sk-logs-client-key-5521';
const UPSTREAM = 'sk-logs-upstream-key-8876';
const H = { 'X-Management-Key': SECRET };

let mock, proxy, logDir;

async function call(p, { method = 'GET', body, query = '' } = {}) {
  const r = await fetch(`${proxy.url}/v0/management${p}${query}`, { method, headers: H, body: body && JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text };
}

const mainLog = () => (fs.existsSync(path.join(logDir, 'main.log')) ? fs.readFileSync(path.join(logDir, 'main.log'), 'utf8') : '');

before(async () => {
  mock = await startMock({ models: ['up-model'] });
  proxy = await startProxy({
    apiKeys: [CLIENT],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: [UPSTREAM], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: { 'remote-management': { 'secret-key': SECRET }, 'logging-to-file': false },
  });
  logDir = path.join(proxy.dir, 'logs');
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
  if (mock) await mock.close();
});

test('logging-to-file on: lines go to logs/main.log; GET /logs; DELETE /logs; off again', async () => {
  assert.equal((await call('/logging-to-file', { method: 'PUT', body: { value: true } })).status, 200);
  await until(() => /reloaded/.test(mainLog()), 'the reload line in logs/main.log');
  assert.equal(fs.statSync(path.join(logDir, 'main.log')).mode & 0o777, 0o600);

  const chat = await fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT}` },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(chat.status, 200);
  await fetch(`${proxy.url}/v1/models?key=${CLIENT}`);
  await call('/api-keys', { method: 'DELETE', query: `?value=${CLIENT}-nope` });
  await until(() => /POST \/v1\/chat\/completions/.test(mainLog()), 'the access line of the chat request');

  const r = await call('/logs');
  assert.equal(r.status, 200, r.text);
  assert.ok(Array.isArray(r.json.lines) && r.json.lines.length > 0);
  assert.equal(r.json['line-count'], r.json.lines.length);
  assert.ok(r.json.lines.some((l) => l.includes('POST /v1/chat/completions')));
  assert.ok(Math.abs(r.json['latest-timestamp'] - Date.now() / 1000) < 600, String(r.json['latest-timestamp']));
  const lim = await call('/logs', { query: '?limit=2' });
  assert.equal(lim.json.lines.length, 2);
  const now = mainLog().split('\n');
  assert.ok(lim.json.lines.every((l) => now.includes(l)), 'lines of main.log');
  // after=T: only lines stamped later than T (the log writes local time)
  const stampOf = (l) => {
    const m = l.match(/^\[(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\]/);
    return m && new Date(+m[1], m[2] - 1, +m[3], +m[4], +m[5], +m[6]).getTime() / 1000;
  };
  const cut = r.json['latest-timestamp'] - 1;
  const later = await call('/logs', { query: `?after=${cut}` });
  assert.ok(later.json.lines.length > 0);
  assert.ok(later.json.lines.every((l) => stampOf(l) === null || stampOf(l) > cut));
  const none = await call('/logs', { query: `?after=${Math.floor(Date.now() / 1000) + 3600}` });
  assert.deepEqual(none.json, { lines: [], 'line-count': 0, 'latest-timestamp': 0 });

  const d = await call('/logs', { method: 'DELETE' });
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.success, true);
  assert.ok(d.json.removed >= 1);
  assert.ok(!mainLog().includes('POST /v1/chat/completions'), 'cleared');
  // the log goes on in the same file after the clear
  await call('/debug');
  await until(() => /GET \/v0\/management\/debug/.test(mainLog()), 'a line after the clear');

  assert.equal((await call('/logging-to-file', { method: 'PUT', body: { value: false } })).status, 200);
  await until(() => /reloaded/.test(proxy.stderr()), 'log lines back on stderr');
});

test('no key or token appears in any log file written, nor on stderr', async () => {
  const files = fs.existsSync(logDir) ? fs.readdirSync(logDir) : [];
  assert.ok(files.includes('main.log'));
  const all = files.map((f) => fs.readFileSync(path.join(logDir, f), 'utf8')).join('\n') + proxy.stderr() + proxy.stdout();
  for (const s of [SECRET, CLIENT, UPSTREAM]) {
    const at = all.indexOf(s);
    assert.ok(at < 0, `${s} is logged: ${all.slice(Math.max(0, at - 200), at + 80)}`);
  }
});
