// Before the first byte reaches the client, cliproxy holds the response
// headers until the upstream's first real event: an error there fails over
// to another account (streaming.bootstrap-retries) or becomes a clean HTTP
// error in the client's format. streaming.keepalive-seconds keeps quiet
// streams alive with SSE comments.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const T = (ms = 20000) => ({ timeout: ms });
let mock;
before(async () => { mock = await startMock(); });
after(async () => { await mock?.close(); });

async function post(url, path, body, headers = {}) {
  const r = await fetch(url + path, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body), signal: AbortSignal.timeout(15000),
  });
  return { status: r.status, headers: r.headers, text: await r.text() };
}

const chat = (model) => ({ model, stream: true, messages: [{ role: 'user', content: 'hi' }] });
const sseText = (text) => text.split('\n\n').map((f) => f.replace(/^data: /, ''))
  .filter((d) => d && d !== '[DONE]' && d[0] === '{').map((d) => JSON.parse(d))
  .map((c) => c.choices?.[0]?.delta?.content || '').join('');

test('an error as the first event fails over to the next account (bootstrap-retries: 1)', T(), async () => {
  const proxy = await startProxy({
    openaiCompat: [
      { name: 'a', baseUrl: `${mock.url}/a/v1`, keys: ['ka'], models: [{ name: 'up', alias: 'pooled' }] },
      { name: 'b', baseUrl: `${mock.url}/b/v1`, keys: ['kb'], models: [{ name: 'up', alias: 'pooled' }] },
    ],
    extra: { streaming: { 'bootstrap-retries': 1 }, 'request-retry': 1 },
  });
  try {
    mock.reset().reply({ text: 'served by the second account', chunks: 3 });
    mock.once({ text: 'never', errorAfter: 0, streamError: { status: 529, message: 'Overloaded', type: 'overloaded_error' } });
    const r = await post(proxy.url, '/v1/chat/completions', chat('pooled'));
    assert.equal(r.status, 200, r.text);
    assert.equal(sseText(r.text), 'served by the second account');
    assert.doesNotMatch(r.text, /Overloaded/);
    assert.equal(mock.requests.length, 2);
    assert.notEqual(mock.requests[0].path.split('/')[1], mock.requests[1].path.split('/')[1], 'two different accounts');
  } finally {
    await proxy.stop();
  }
});

test('without bootstrap retries the first-event error is a clean HTTP error in the client format', T(), async () => {
  const proxy = await startProxy({
    openaiCompat: [{ name: 'a', baseUrl: `${mock.url}/v1`, keys: ['ka'], models: ['solo'] }],
  });
  try {
    mock.reset().reply({ text: 'x', errorAfter: 0, streamError: { status: 429, message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } });
    const r = await post(proxy.url, '/v1/chat/completions', chat('solo'));
    assert.equal(r.status, 429, r.text);
    assert.match(r.headers.get('content-type'), /application\/json/);
    const j = JSON.parse(r.text);
    assert.equal(j.error.message, 'slow down');
  } finally {
    await proxy.stop();
  }
});

test('Claude: an error right after message_start is held back and answered as HTTP 529', T(), async () => {
  const proxy = await startProxy({
    extra: { 'claude-api-key': [{ 'api-key': 'sk-ant', 'base-url': mock.url, models: [{ name: 'claude-up', alias: 'claude-x' }] }] },
  });
  try {
    mock.reset().reply({ text: 'x', errorAfter: 1, streamError: { status: 529, message: 'Overloaded', type: 'overloaded_error' } });
    const r = await post(proxy.url, '/v1/messages', { model: 'claude-x', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }] },
      { 'anthropic-version': '2023-06-01' });
    assert.equal(r.status, 529, r.text);
    const j = JSON.parse(r.text);
    assert.equal(j.type, 'error');
    assert.equal(j.error.type, 'overloaded_error');
  } finally {
    await proxy.stop();
  }
});

test('keepalive-seconds: a quiet stream gets ": keep-alive" comments', T(), async () => {
  const proxy = await startProxy({
    openaiCompat: [{ name: 'a', baseUrl: `${mock.url}/v1`, keys: ['ka'], models: ['quiet'] }],
    extra: { streaming: { 'keepalive-seconds': 1 } },
  });
  try {
    mock.reset().reply({ text: 'one two', chunks: 2, eventDelayMs: 2400 });
    const r = await post(proxy.url, '/v1/chat/completions', chat('quiet'));
    assert.equal(r.status, 200);
    const n = (r.text.match(/^: keep-alive$/mg) || []).length;
    assert.ok(n >= 2, `keep-alives: ${n}\n${r.text}`);
    assert.equal(sseText(r.text), 'one two');
  } finally {
    await proxy.stop();
  }
});
