// Issue 13, request logs of token counts: a count request asked upstream
// (Gemini's countTokens here; Claude's count_tokens takes the same path)
// shows its upstream attempt in the error log and in the request log, as
// an inference request does, with the key redacted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';
import { mgmtCall, sendJson, bodyServer } from './lib/mgmt.mjs';

const SECRET = 'count-log-secret-6620';
const CLIENT = 'sk-count-log-client-1189';
const UPSTREAM = 'AIza-count-log-upstream-5531';

// A Gemini API that answers countTokens as told.
const up = { next: [], hits: [] };
let server, upUrl, proxy, logDir;

before(async () => {
  server = bodyServer((req, res, raw) => {
    up.hits.push({ url: req.url, key: req.headers['x-goog-api-key'] });
    const a = up.next.shift() || { status: 200 };
    if (a.status === 200) return sendJson(res, 200, { totalTokens: 42, promptTokensDetails: [{ modality: 'TEXT', tokenCount: 42 }] });
    return sendJson(res, a.status, { error: { code: a.status, message: `count refused for key ${UPSTREAM}`, status: 'X' } });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  upUrl = `http://127.0.0.1:${server.address().port}`;
  proxy = await startProxy({
    apiKeys: [CLIENT],
    extra: {
      'remote-management': { 'secret-key': SECRET },
      'gemini-api-key': [{ 'api-key': UPSTREAM, 'base-url': upUrl, models: [{ name: 'up-gem', alias: 'gem' }] }],
    },
  });
  logDir = path.join(proxy.dir, 'logs');
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
  await new Promise((r) => server.close(r));
});

const logs = () => (fs.existsSync(logDir) ? fs.readdirSync(logDir).filter((f) => f.endsWith('.log') && f !== 'main.log') : []);
const read = (f) => fs.readFileSync(path.join(logDir, f), 'utf8');
const count = (text) => fetch(`${proxy.url}/v1beta/models/gem:countTokens`, {
  method: 'POST', headers: { 'x-goog-api-key': CLIENT, 'content-type': 'application/json' },
  body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text }] }] }),
});

test('a count the upstream refuses: the error log has the upstream attempt, the key redacted', async () => {
  up.next.push({ status: 400 });
  const r = await count('count this please');
  assert.equal(r.status, 400);
  await r.text();
  assert.equal(up.hits.at(-1).key, UPSTREAM);
  assert.match(up.hits.at(-1).url, /\/models\/up-gem:countTokens$/);
  const [name] = await until(() => logs().filter((f) => f.startsWith('error-')).length === 1 && logs(), 'the error log');
  assert.match(name, /^error-v1beta-models-gem-countTokens-/);
  const text = read(name);
  for (const s of ['=== REQUEST INFO ===', '=== REQUEST BODY ===', '=== API REQUEST 1 ===', '=== RESPONSE ===']) {
    assert.ok(text.includes(s), `${s} in\n${text}`);
  }
  assert.ok(text.includes(`${upUrl}/v1beta/models/up-gem:countTokens`), `the upstream URL in\n${text}`);
  assert.match(text, /=== API (ERROR )?RESPONSE 1 ===\nStatus: 400/);
  assert.ok(text.includes('count refused for key [redacted]'), 'the upstream error, its quote of the key redacted');
  assert.ok(!text.includes(UPSTREAM) && !text.includes(CLIENT), 'no key in the file');
});

test('request-log on: a count answered by the estimate after a 503 still shows the attempt', async () => {
  assert.equal((await mgmtCall(proxy.url, '/request-log', { method: 'PUT', key: SECRET, body: { value: true } })).status, 200);
  await until(async () => (await mgmtCall(proxy.url, '/config', { key: SECRET })).json['request-log'] === true, 'the reload');
  await until(async () => {
    // the reload reaches every worker a moment after the file: ask until a request log appears
    up.next.push({ status: 503 });
    const r = await count('estimate me');
    assert.equal(r.status, 200);
    const j = await r.json();
    assert.ok(j.totalTokens > 0 && j.totalTokens !== 42, 'the local estimate');
    return logs().some((f) => !f.startsWith('error-') && read(f).includes('estimate me'));
  }, 'the request log');
  const name = logs().find((f) => !f.startsWith('error-') && read(f).includes('estimate me'));
  const text = read(name);
  assert.match(text, /=== API (ERROR )?RESPONSE 1 ===\nStatus: 503/);
  assert.match(text, /=== RESPONSE ===\nStatus: 200/);
  assert.match(text, /"totalTokens"/);
  assert.ok(!text.includes(UPSTREAM) && !text.includes(CLIENT), 'no key in the file');
  // and a count the upstream answers: its body is the response
  const ok = await count('upstream count');
  assert.deepEqual((await ok.json()).totalTokens, 42);
  const f2 = await until(() => logs().find((f) => !f.startsWith('error-') && read(f).includes('upstream count')), 'its log');
  assert.match(read(f2), /=== API RESPONSE 1 ===\nStatus: 200/);
  assert.ok(read(f2).includes('"totalTokens":42'), read(f2));
});
