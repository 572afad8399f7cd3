// Issue 13, request logs (fact sheet §8): failed API requests kept as
// error-*.log (newest error-logs-max-files), request-log: true writes one
// file per request with every section, GET /request-error-logs,
// /request-error-logs/:name and /request-log-by-id/:id, names checked, and
// no key or token in any file written.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';

const SECRET = 'reqlog-e2e-secret-4410';
const CLIENT = 'sk-reqlog-client-key-7781';
const WRONG = 'sk-reqlog-wrong-key-3307';
const UPSTREAM = 'sk-reqlog-upstream-key-9902';
const KEEP = 3;
const H = { 'X-Management-Key': SECRET };

let mock, proxy, logDir;

async function call(p, { method = 'GET', body } = {}) {
  const r = await fetch(`${proxy.url}/v0/management${p}`, { method, headers: H, body: body && JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text, headers: r.headers };
}

function chat(content, { key = CLIENT, stream = false, extraHeaders = {} } = {}) {
  return fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, cookie: `session=${key}`, ...extraHeaders },
    body: JSON.stringify({ model: 'm', stream, messages: [{ role: 'user', content }] }),
  });
}

const files = () => (fs.existsSync(logDir) ? fs.readdirSync(logDir).filter((f) => f.endsWith('.log')) : []);
const errorFiles = () => files().filter((f) => f.startsWith('error-'));
const read = (f) => fs.readFileSync(path.join(logDir, f), 'utf8');
// for polling: the rotation may delete a listed file before it is read
const readIfThere = (f) => {
  try { return read(f); } catch (e) { if (e.code === 'ENOENT') return ''; throw e; }
};

before(async () => {
  mock = await startMock({ models: ['up-model'] });
  proxy = await startProxy({
    apiKeys: [CLIENT],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: [UPSTREAM], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: { 'remote-management': { 'secret-key': SECRET }, 'error-logs-max-files': KEEP },
  });
  logDir = path.join(proxy.dir, 'logs');
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
  if (mock) await mock.close();
});

test('request-log off: a good request leaves no file, a failed one an error log with its sections', async () => {
  mock.reply({ text: 'fine answer' });
  const ok = await chat('good request');
  assert.equal(ok.status, 200);
  await ok.text();
  // the upstream fails and quotes the key it was given
  mock.once({ error: { status: 500, message: `upstream broke, key was ${UPSTREAM}` } });
  const bad = await chat('this one fails');
  assert.equal(bad.status, 500);
  await bad.text();
  const [name] = await until(() => errorFiles().length === 1 && errorFiles(), 'the error log');
  assert.match(name, /^error-v1-chat-completions-\d{4}-\d\d-\d\dT\d{6}-[0-9a-f]{8}\.log$/);
  assert.equal(files().filter((f) => !f.startsWith('error-') && f !== 'main.log').length, 0, files().join(','));
  assert.equal(fs.statSync(path.join(logDir, name)).mode & 0o777, 0o600);
  const text = read(name);
  for (const s of ['=== REQUEST INFO ===', '=== HEADERS ===', '=== REQUEST BODY ===', '=== API REQUEST 1 ===',
    '=== API RESPONSE 1 ===', '=== RESPONSE ===']) assert.ok(text.includes(s), `${s} in\n${text}`);
  assert.match(text, /URL: \/v1\/chat\/completions/);
  assert.ok(text.includes('this one fails'), 'the client body');
  assert.ok(text.includes(`${mock.url}/v1/chat/completions`), 'the upstream URL');
  assert.ok(text.includes('up-model'), 'the upstream model');
  assert.match(text, /=== API RESPONSE 1 ===\nStatus: 500/);
  assert.match(text, /=== RESPONSE ===\nStatus: 500/);
  assert.match(text, /authorization: \[redacted\]/i);
  assert.match(text, /cookie: \[redacted\]/i);
  assert.ok(text.includes('upstream broke, key was [redacted]'), 'the echoed key is redacted too');
});

test('a wrong client key is an error log too; only the newest error-logs-max-files are kept', async () => {
  const r = await chat('wrong key', { key: WRONG });
  assert.equal(r.status, 401);
  await r.text();
  await until(() => errorFiles().length === 2, 'the 401 error log');
  for (let i = 0; i < 4; i++) {
    assert.equal((await call('/reset-cooldown', { method: 'POST', body: {} })).status, 200);
    const seen = mock.requests.length;
    mock.once({ error: { status: 400, message: `bad ${i}` } });
    const b = await chat(`failing ${i}`);
    assert.equal(b.status, 400);
    await b.text();
    assert.equal(mock.requests.length, seen + 1, 'the upstream got it');
    await until(() => errorFiles().some((f) => readIfThere(f).includes(`failing ${i}`)), `error log ${i}`);
  }
  await until(() => errorFiles().length === KEEP, `${KEEP} error logs`);
  const kept = errorFiles().map(read).join('\n');
  for (const i of [1, 2, 3]) assert.ok(kept.includes(`failing ${i}`), `failing ${i} kept`);
  assert.ok(!kept.includes('this one fails'), 'the oldest deleted');
});

test('GET /request-error-logs, /request-error-logs/:name and /request-log-by-id/:id', async () => {
  const l = await call('/request-error-logs');
  assert.equal(l.status, 200, l.text);
  const onDisk = errorFiles().sort();
  assert.deepEqual(l.json.files.map((f) => f.name).sort(), onDisk);
  for (const f of l.json.files) {
    const st = fs.statSync(path.join(logDir, f.name));
    assert.equal(f.size, st.size);
    assert.equal(f.modified, Math.floor(st.mtimeMs / 1000));
    assert.deepEqual(Object.keys(f), ['name', 'size', 'modified']);
  }
  const name = onDisk[0];
  const d = await call(`/request-error-logs/${name}`);
  assert.equal(d.status, 200);
  assert.equal(d.text, read(name));
  assert.match(d.headers.get('content-disposition'), new RegExp(`attachment; filename="${name}"`));
  const id = name.match(/-([0-9a-f]{8})\.log$/)[1];
  const b = await call(`/request-log-by-id/${id}`);
  assert.equal(b.status, 200);
  assert.equal(b.text, read(name));
  assert.equal((await call('/request-log-by-id/00000000')).status, 404);
  assert.equal((await call('/request-log-by-id/..%2F..%2Fconfig')).status, 400);
  // names: only error-*.log plain names of the logs directory
  fs.writeFileSync(path.join(proxy.dir, 'error-outside.log'), 'outside');
  fs.symlinkSync(path.join(proxy.dir, 'config.yaml'), path.join(logDir, 'error-link.log'));
  for (const bad of ['..%2Fconfig.yaml', '..%2Ferror-outside.log', 'error-..%2F..%2Ferror-outside.log', 'main.log',
    '.error-x.log', 'error-link.log', 'error-missing.log']) {
    const r = await call(`/request-error-logs/${bad}`);
    assert.ok(r.status === 400 || r.status === 404, `${bad}: ${r.status}`);
    assert.ok(!r.text.includes('outside') && !r.text.includes('secret-key'), bad);
  }
  fs.unlinkSync(path.join(logDir, 'error-link.log'));
  assert.ok(!(await call('/request-error-logs')).json.files.some((f) => f.name === 'error-link.log'));
});

test('request-log: true writes every request, streams included, with the answer', async () => {
  assert.equal((await call('/reset-cooldown', { method: 'POST', body: {} })).status, 200);
  assert.equal((await call('/request-log', { method: 'PUT', body: { value: true } })).status, 200);
  await until(() => /reloaded/.test(proxy.stderr()), 'the reload');
  await until(async () => (await call('/request-log')).json['request-log'] === true, 'request-log on');
  mock.reply({ text: 'logged answer text' });
  const before = new Set(files());
  // the reload may still be going on in another worker: ask until a log comes
  await until(async () => {
    const r = await chat('logged question');
    await r.text();
    return files().some((f) => !before.has(f) && !f.startsWith('error-') && read(f).includes('logged question'));
  }, 'a request log');
  const name = files().find((f) => !before.has(f) && !f.startsWith('error-') && read(f).includes('logged question'));
  assert.match(name, /^v1-chat-completions-\d{4}-\d\d-\d\dT\d{6}-[0-9a-f]{8}\.log$/);
  const text = read(name);
  assert.ok(text.includes(`${mock.url}/v1/chat/completions`), 'the upstream URL');
  assert.ok(text.includes('"up-model"') && text.includes('logged question'), 'the upstream body');
  assert.match(text, /=== API REQUEST 1 ===[^]*Authorization: \[redacted\]/i);
  assert.match(text, /=== API RESPONSE 1 ===\nStatus: 200/);
  assert.match(text, /=== RESPONSE ===\nStatus: 200/);
  assert.ok(text.slice(text.indexOf('=== RESPONSE ===')).includes('logged answer text'), 'the client response body');
  const id = name.match(/-([0-9a-f]{8})\.log$/)[1];
  assert.equal((await call(`/request-log-by-id/${id}`)).text, text);

  const s = await chat('streamed question', { stream: true });
  assert.equal(s.status, 200);
  assert.ok((await s.text()).includes('[DONE]'));
  const sn = await until(() => files().find((f) => read(f).includes('streamed question')), 'the stream log');
  const st = read(sn);
  assert.match(st, /Stream: true/);
  const upSection = st.slice(st.indexOf('=== API RESPONSE 1 ==='), st.indexOf('=== RESPONSE ==='));
  assert.ok(upSection.includes('data: ') && upSection.includes('chat.completion.chunk'), `the upstream stream bytes: ${upSection}`);
  assert.equal((await call('/request-log', { method: 'PUT', body: { value: false } })).status, 200);
});

test('no key or token appears in any file of the logs directory', async () => {
  const all = files().map(read).join('\n');
  assert.ok(files().length >= 5);
  for (const s of [SECRET, CLIENT, WRONG, UPSTREAM]) {
    const at = all.indexOf(s);
    assert.ok(at < 0, `${s} is logged: ${all.slice(Math.max(0, at - 200), at + 80)}`);
  }
});
