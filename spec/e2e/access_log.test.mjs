// The access log as a reader of the request record (runtime/net/cpx_access_log.c,
// lua/rt/access_log.lua): exactly one line per request, whichever path served
// it — the C lane (" | fast"), the Lua pipeline, streams, clients that left
// mid-stream — and answers the HTTP layer gave before any handler saw a
// request (400, 408, 413, 431). With debug on, a line written because its
// record never came says so; none of these requests may need that.
//
// Lua-path requests carry a unique query (?t=name) so each line is found by
// its target; the lane only takes the bare path, so its lines are counted.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';
import { connect, rawRequest, eager } from './lib/raw_http.mjs';
import { until } from './lib/wait.mjs';

const KEY = 'sk-access-log-e2e';
let mock;
let proxy;
let stderr = '';

const chat = (extra = {}) => JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });
const claude = (extra = {}) => JSON.stringify({ model: 'm', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }], ...extra });

async function post(path, body, key = KEY) {
  const r = await fetch(`${proxy.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body,
    signal: AbortSignal.timeout(10000),
  });
  return { status: r.status, text: await r.text() };
}

// A stream the client leaves after its first bytes.
async function leaveStream(path, body) {
  const c = await connect(proxy.port);
  c.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer ${KEY}\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  await until(() => c.buf.includes('data:'), 'the first stream bytes');
  c.close();
}

function lines() {
  return stderr.split('\n');
}
// Access lines of a request target (the redacted target as logged).
const of = (method, target) => lines().filter((l) => l.includes(` | ${method} ${target} | in=`));

before(async () => {
  mock = await startMock();
  proxy = await startProxy({
    apiKeys: [KEY],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-a'], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: {
      workers: 1,
      debug: true,
      limits: { 'max-header-bytes': 2048, 'max-body-bytes': 4096, 'header-timeout-seconds': 0.5 },
    },
  });
  assert.match(proxy.stderr(), /fast path: \d+ model/, 'the lane serves m');

  mock.reply({ text: 'hello', usage: { input: 3, output: 2 } });
  // the lane: non-stream and stream
  assert.equal((await post('/v1/chat/completions', chat())).status, 200);
  assert.equal((await post('/v1/chat/completions', chat({ stream: true }))).status, 200);
  // the Lua pipeline: a query keeps the lane out; another client format
  assert.equal((await post('/v1/chat/completions?t=chat-lua', chat())).status, 200);
  assert.equal((await post('/v1/messages?t=claude', claude())).status, 200);
  assert.equal((await post('/v1/messages?t=claude-stream', claude({ stream: true }))).status, 200);
  // Lua answers that are no inference
  assert.equal((await fetch(`${proxy.url}/v1/models?t=models`, { headers: { authorization: `Bearer ${KEY}` } })).status, 200);
  assert.equal((await fetch(`${proxy.url}/nowhere?t=nf`)).status, 404);
  assert.equal((await post('/v1/messages?t=badkey', claude(), 'sk-wrong')).status, 401);

  // clients that leave mid-stream, on both paths
  mock.reply({ endless: { intervalMs: 5 } });
  await leaveStream('/v1/chat/completions', chat({ stream: true }));
  await leaveStream('/v1/messages?t=claude-left', claude({ stream: true }));

  // the HTTP layer, before any handler
  await rawRequest(proxy.port, 'NOT HTTP AT ALL\r\n\r\n');
  await rawRequest(proxy.port, `GET /?t=big-head HTTP/1.1\r\nHost: x\r\nX-Fill: ${'a'.repeat(4096)}\r\n\r\n`);
  await eager(proxy.port, Buffer.from(`POST /v1/messages?t=big-body HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n${'b'.repeat(9000)}`));
  const slow = await connect(proxy.port);
  slow.write('GET /?t=slow HTTP/1.1\r\nHost: x\r\n'); // the header never ends
  const r408 = await slow.next({ timeoutMs: 10000 });
  slow.close();
  assert.equal(r408.status, 408);

  // Every line is written by the drain at the latest.
  await proxy.stop();
  proxy.stopped = true;
  stderr = proxy.stderr();
});

after(async () => {
  if (proxy && !proxy.stopped) await proxy.stop();
  await mock?.close();
});

test('one line per Lua-path request, with its status', () => {
  const cases = [
    ['POST', '/v1/chat/completions?t=chat-lua', 200],
    ['POST', '/v1/messages?t=claude', 200],
    ['POST', '/v1/messages?t=claude-stream', 200],
    ['GET', '/v1/models?t=models', 200],
    ['GET', '/nowhere?t=nf', 404],
    ['POST', '/v1/messages?t=badkey', 401],
  ];
  for (const [method, target, status] of cases) {
    const l = of(method, target);
    assert.equal(l.length, 1, `${method} ${target}: ${l.length} lines\n${l.join('\n')}`);
    assert.match(l[0], new RegExp(`\\] ${status} \\| [0-9.]+ms \\| `), l[0]);
    assert.doesNotMatch(l[0], /\| fast/, l[0]);
  }
});

test('one line per lane request, tagged fast; the one the client left says so', () => {
  const l = of('POST', '/v1/chat/completions');
  assert.equal(l.length, 3, l.join('\n'));
  assert.ok(l.every((x) => / \| fast( \||$)/.test(x)), l.join('\n'));
  assert.equal(l.filter((x) => /\| client closed$/.test(x)).length, 1, l.join('\n'));
  assert.equal(l.filter((x) => /\] 200 \| .*out=[1-9]/.test(x)).length, 3, l.join('\n'));
});

test('a Lua stream the client left: one line, client closed', () => {
  const l = of('POST', '/v1/messages?t=claude-left');
  assert.equal(l.length, 1, l.join('\n'));
  assert.match(l[0], /\| client closed$/);
});

test('answers before a handler: one line each, and no request line', () => {
  const count = (re) => lines().filter((l) => re.test(l)).length;
  assert.equal(count(/\] 400 \| 127\.0\.0\.1[^|]* \| rejected: /), 1, 'the 400');
  assert.equal(count(/\] 431 \| 127\.0\.0\.1[^|]* \| rejected: /), 1, 'the 431');
  assert.equal(count(/\] 413 \| 127\.0\.0\.1[^|]* \| rejected: /), 1, 'the 413');
  assert.equal(count(/\] 408 \| 127\.0\.0\.1[^|]* \| request not received in time/), 1, 'the 408');
  for (const t of ['/?t=big-head', '/v1/messages?t=big-body', '/?t=slow']) {
    assert.equal(lines().filter((l) => l.includes(` ${t} | in=`)).length, 0, t);
  }
});

test('every record came: no line needed the fallback', () => {
  const l = lines().filter((x) => x.includes('access line written without its record'));
  assert.equal(l.length, 0, l.join('\n'));
});
