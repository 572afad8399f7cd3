// Token counts forwarded upstream choose their account through the pool,
// as inference does: round-robin over the accounts that can count, a
// cooling account skipped, and the local estimate once none is open.
//
// Two Gemini API-key accounts (gk-a, gk-b) serve one model alias. The mock
// answers countTokens itself; generateContent is scripted per key so that
// an inference request can cool an account down (429, retry-after 600).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const CLIENT_KEY = 'sk-client-count-pool';
const MODEL = 'cnt-pool';
const T = (ms = 15000) => ({ timeout: ms });

let mock, proxy;
const limited = new Set(); // keys whose generateContent answers 429

const keyOf = (r) => r.headers['x-goog-api-key'];
const counts = () => mock.requests.filter((r) => r.path.endsWith(':countTokens'));
const generates = () => mock.requests.filter((r) => r.path.endsWith(':generateContent'));

async function post(path, body) {
  const r = await fetch(`${proxy.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-goog-api-key': CLIENT_KEY },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json };
}

const countReq = () => post(`/v1beta/models/${MODEL}:countTokens`,
  { contents: [{ role: 'user', parts: [{ text: 'count these words for me please' }] }] });
const generate = () => post(`/v1beta/models/${MODEL}:generateContent`,
  { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] });

before(async () => {
  mock = await startMock();
  mock.reply((req) => (limited.has(keyOf(req))
    ? { error: { status: 429, message: 'quota exhausted', headers: { 'retry-after': '600' } } }
    : { text: `served by ${keyOf(req)}` }));
  const entry = (key) => ({ 'api-key': key, 'base-url': mock.url, models: [{ name: 'cnt-up', alias: MODEL }] });
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    extra: { 'gemini-api-key': [entry('gk-a'), entry('gk-b')] },
  });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

test('counts take turns over the accounts (round-robin), each answered upstream', T(), async () => {
  const before = counts().length;
  for (let i = 0; i < 4; i++) {
    const r = await countReq();
    assert.equal(r.status, 200);
    assert.equal(typeof r.body.totalTokens, 'number');
  }
  const keys = counts().slice(before).map(keyOf);
  assert.equal(keys.length, 4, 'every count reached the upstream');
  assert.equal(keys.filter((k) => k === 'gk-a').length, 2, `gk-a twice in ${keys}`);
  assert.equal(keys.filter((k) => k === 'gk-b').length, 2, `gk-b twice in ${keys}`);
  for (let i = 1; i < keys.length; i++) assert.notEqual(keys[i], keys[i - 1], `alternating: ${keys}`);
});

test('a cooling account is skipped: every count goes to the other one', T(), async () => {
  limited.add('gk-a');
  // Inference until gk-a has met its 429 (round-robin reaches it within two
  // requests); the pool then cools it and the request is served by gk-b.
  for (let i = 0; i < 2 && !generates().some((r) => keyOf(r) === 'gk-a'); i++) {
    const r = await generate();
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  assert.ok(generates().some((r) => keyOf(r) === 'gk-a' && r.status === 429), 'gk-a answered 429');
  const before = counts().length;
  for (let i = 0; i < 4; i++) assert.equal((await countReq()).status, 200);
  const keys = counts().slice(before).map(keyOf);
  assert.deepEqual(keys, ['gk-b', 'gk-b', 'gk-b', 'gk-b']);
});

test('every account cooling: the local estimate answers and the upstream is not asked', T(), async () => {
  limited.add('gk-b');
  const g = await generate(); // gk-b, the only open account, cools
  assert.equal(g.status, 429);
  const before = counts().length;
  const r = await countReq();
  assert.equal(r.status, 200);
  assert.ok(r.body.totalTokens > 0, JSON.stringify(r.body));
  assert.equal(r.body.promptTokensDetails[0].tokenCount, r.body.totalTokens);
  assert.equal(counts().length, before, 'no count went upstream');
});
