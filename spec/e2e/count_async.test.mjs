// cpx.tokens.count_async (runtime/lua/cpx_tokens_lua.c) through a count
// endpoint: texts over rt.count's SYNC_BYTES are counted in libuv's
// threadpool while the request's coroutine waits, shorter ones on the loop.
// Both must give the tokenizer's exact count: "hello" and " hello" are one
// o200k_base token each, so "hello" + (k-1) x " hello" is k tokens plus the
// same few of the request around it (measured on the loop path). Several
// counts at once each get their own answer.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const KEY = 'sk-count-async-e2e';
let mock;
let proxy;
let around; // the tokens besides the text, from a count on the loop

const text = (k) => 'hello' + ' hello'.repeat(k - 1);

async function count(k) {
  const r = await fetch(`${proxy.url}/v1/messages/count_tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY, 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: text(k) }] }),
    signal: AbortSignal.timeout(10000),
  });
  const body = await r.text();
  assert.equal(r.status, 200, body);
  return JSON.parse(body).input_tokens;
}

before(async () => {
  mock = await startMock();
  proxy = await startProxy({
    apiKeys: [KEY],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-a'], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: { workers: 1 },
  });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

test('on the loop (3 KB) and in the threadpool (6 KB, 60 KB): exact counts', async () => {
  around = (await count(500)) - 500;
  assert.ok(around >= 0 && around < 10, `tokens around the text: ${around}`);
  assert.equal(await count(499), 499 + around);
  assert.equal(await count(1000), 1000 + around);
  assert.equal(await count(10000), 10000 + around);
  assert.equal(mock.requests.length, 0, 'counted locally, the upstream was not asked');
});

test('counts in the threadpool at once: each request gets its own', async () => {
  const ks = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000];
  const got = await Promise.all(ks.map((k) => count(k)));
  assert.deepEqual(got, ks.map((k) => k + around));
});
