// Issue 2 end to end: the official openai SDK (6.49.0) -> cliproxy (the real
// binary) -> a mock OpenAI-compatible upstream, all on 127.0.0.1.
//
// Models (alias -> upstream name) live on two openai-compatibility entries so
// that the failure tests cool down only their own models:
//   mockai  (keys up-key-A, up-key-B): e2e-model, e2e-tools, e2e-endless
//   mockerr (key  up-key-E):            e2e-fail, e2e-fail-stream, e2e-cut

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import OpenAI from 'openai';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, healthz } from './lib/proxy.mjs';
import { connect, rawRequest, chatRequest } from './lib/raw_http.mjs';

const CLIENT_KEY = 'sk-client-e2e-7f3a';
const UP_KEYS = ['up-key-A', 'up-key-B'];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 10000) => ({ timeout: ms });

let mock, proxy, client;

before(async () => {
  mock = await startMock();
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    openaiCompat: [
      {
        name: 'mockai', baseUrl: `${mock.url}/v1`, keys: UP_KEYS, headers: { 'X-Mock-Entry': 'mockai' },
        models: [
          { name: 'mock-upstream-model', alias: 'e2e-model' },
          { name: 'mock-tools-model', alias: 'e2e-tools' },
          { name: 'mock-endless-model', alias: 'e2e-endless' },
        ],
      },
      {
        name: 'mockerr', baseUrl: `${mock.url}/err/v1`, keys: ['up-key-E'],
        models: [
          { name: 'mock-fail-500', alias: 'e2e-fail' },
          { name: 'mock-fail-500-stream', alias: 'e2e-fail-stream' },
          { name: 'mock-cut', alias: 'e2e-cut' },
        ],
      },
    ],
  });
  client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 10000 });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

const hello = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello' }];

function assertUpstreamAuth(rec, keys = UP_KEYS) {
  assert.ok(keys.map((k) => `Bearer ${k}`).includes(rec.headers.authorization), `upstream Authorization was ${rec.headers.authorization}`);
  const leaked = Object.entries(rec.headers).filter(([, v]) => String(v).includes(CLIENT_KEY));
  assert.deepEqual(leaked, [], 'the client key must not be forwarded upstream');
}

function assertOpenAIError(body, where) {
  assert.equal(typeof body, 'object', `${where}: body is JSON`);
  assert.equal(typeof body.error, 'object', `${where}: {"error":{...}} envelope, got ${JSON.stringify(body)}`);
  assert.equal(typeof body.error.message, 'string', `${where}: error.message`);
  assert.equal(typeof body.error.type, 'string', `${where}: error.type`);
  assert.ok('code' in body.error, `${where}: error.code present`);
}

async function post(path, body, { key = CLIENT_KEY, headers = {} } = {}) {
  const r = await fetch(`${proxy.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}), ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(8000),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, headers: r.headers, text, json };
}

// ------------------------------------------------------------------ happy paths

test('non-stream text: alias rewritten to the upstream name, body and usage passed through', T(), async () => {
  mock.reset().reply({ text: 'Hello from upstream.', usage: { input: 5, output: 4 } });
  const r = await client.chat.completions.create({ model: 'e2e-model', messages: hello, temperature: 0.25, max_tokens: 50 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.content, 'Hello from upstream.');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.deepEqual([r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens], [5, 4, 9]);

  assert.equal(mock.requests.length, 1);
  const up = mock.last();
  assert.equal(up.method, 'POST');
  assert.equal(up.path, '/v1/chat/completions');
  assert.equal(up.body.model, 'mock-upstream-model');
  assert.deepEqual(up.body.messages, hello);
  assert.equal(up.body.temperature, 0.25);
  assert.equal(up.body.max_tokens, 50);
  assert.ok(!up.body.stream);
  assert.equal(up.headers['x-mock-entry'], 'mockai', 'the entry headers are sent upstream');
  assertUpstreamAuth(up);
});

test('stream text with include_usage: deltas forwarded as they arrive, usage chunk, SSE', T(), async () => {
  const text = 'The quick brown fox jumps over the lazy dog.';
  mock.reset().reply({ text, eventDelayMs: 40, usage: { input: 8, output: 10 } });
  const { data: stream, response } = await client.chat.completions
    .create({ model: 'e2e-model', messages: hello, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') || '', /^text\/event-stream/);
  let got = '';
  let firstTextAt = null;
  const chunks = [];
  for await (const c of stream) {
    chunks.push(c);
    const d = c.choices[0]?.delta?.content;
    if (d) { got += d; firstTextAt ??= performance.now(); }
  }
  assert.equal(got, text);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], 'the last chunk is the usage chunk');
  assert.deepEqual([last.usage.prompt_tokens, last.usage.completion_tokens], [8, 10]);
  assert.ok(chunks.some((c) => c.choices[0]?.finish_reason === 'stop'));
  const up = mock.last();
  assert.equal(up.body.stream, true);
  assert.deepEqual(up.body.stream_options, { include_usage: true });
  assert.equal(up.body.model, 'mock-upstream-model');
  assert.ok(firstTextAt < up.finishedAt - 100,
    `first delta reached the client ${(up.finishedAt - firstTextAt).toFixed(0)} ms before the upstream finished; the proxy must not hold the stream`);
});

test('streamed parallel tool calls: the SDK reassembles arguments from deltas', T(), async () => {
  const weather = { city: 'Paris', unit: 'celsius', days: [1, 2, 3], note: 'a "quoted" \\ value, ünïcode' };
  mock.reset().reply({ tools: [{ id: 'call_w1', name: 'get_weather', args: weather }, { id: 'call_t1', name: 'get_time', args: { tz: 'UTC' } }], argChunks: 5 });
  const tools = [
    { type: 'function', function: { name: 'get_weather', description: 'weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
    { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { tz: { type: 'string' } } } } },
  ];
  const s = client.chat.completions.stream({ model: 'e2e-tools', messages: [{ role: 'user', content: 'weather and time?' }], tools, tool_choice: 'auto' });
  const fin = await s.finalChatCompletion();
  const msg = fin.choices[0].message;
  assert.equal(fin.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(msg.tool_calls.map((c) => [c.id, c.type, c.function.name]), [['call_w1', 'function', 'get_weather'], ['call_t1', 'function', 'get_time']]);
  assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), weather);
  assert.deepEqual(JSON.parse(msg.tool_calls[1].function.arguments), { tz: 'UTC' });
  const up = mock.last();
  assert.equal(up.body.model, 'mock-tools-model');
  assert.deepEqual(up.body.tools, tools);
  assert.equal(up.body.tool_choice, 'auto');
});

test('GET /v1/models lists the configured aliases in the OpenAI list shape', T(), async () => {
  const r = await fetch(`${proxy.url}/v1/models`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } });
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.equal(body.object, 'list');
  assert.ok(Array.isArray(body.data));
  const ids = body.data.map((m) => m.id);
  for (const a of ['e2e-model', 'e2e-tools', 'e2e-endless', 'e2e-fail', 'e2e-cut']) assert.ok(ids.includes(a), `${a} listed (got ${ids})`);
  assert.ok(!ids.includes('mock-upstream-model'), 'upstream names are not listed, only aliases');
  for (const m of body.data) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.owned_by, 'string');
    assert.equal(typeof m.created, 'number');
  }
  const list = await client.models.list();
  assert.ok(list.data.some((m) => m.id === 'e2e-model'));
});

test('key rotation: requests alternate across the entry\'s api-key-entries', T(), async () => {
  mock.reset().reply({ text: 'ok' });
  for (let i = 0; i < 4; i++) await client.chat.completions.create({ model: 'e2e-model', messages: hello });
  const auths = mock.requests.map((r) => r.headers.authorization);
  assert.equal(auths.length, 4);
  for (const r of mock.requests) assertUpstreamAuth(r);
  assert.equal(auths.filter((a) => a === 'Bearer up-key-A').length, 2, `keys used: ${auths}`);
  assert.equal(auths.filter((a) => a === 'Bearer up-key-B').length, 2, `keys used: ${auths}`);
  for (let i = 1; i < 4; i++) assert.notEqual(auths[i], auths[i - 1], `round robin: ${auths}`);
});

// -------------------------------------------------------------------- bad inputs

test('a 100 KB header gets 431 and the server keeps serving', T(), async () => {
  const r = await rawRequest(proxy.port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(100 * 1024)}\r\n\r\n`);
  assert.equal(r.status, 431, `expected 431, got ${r.status} ${r.closed ? `(connection closed: ${r.error?.code ?? 'eof'}, ${r.raw?.length} bytes)` : ''}`);
  const h = await healthz(proxy.url);
  assert.equal(h.status, 200);
  assert.deepEqual(JSON.parse(h.text), { status: 'ok' });
});

test('more than 100 header fields get 431', T(), async () => {
  let fields = '';
  for (let i = 0; i < 150; i++) fields += `X-F${i}: v\r\n`;
  const r = await rawRequest(proxy.port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n${fields}\r\n`);
  assert.equal(r.status, 431);
  assert.equal((await healthz(proxy.url)).status, 200);
});

test('malformed JSON body: 400 in OpenAI\'s error envelope, nothing sent upstream', T(), async () => {
  mock.reset().reply({ text: 'should not be reached' });
  const r = await post('/v1/chat/completions', '{"model": "e2e-model", "messages": [{"role": "user", ');
  assert.equal(r.status, 400, r.text);
  assertOpenAIError(r.json, 'malformed JSON');
  assert.match(r.headers.get('content-type') || '', /application\/json/);
  assert.equal(mock.requests.length, 0);
});

test('wrong or missing key: 401 in OpenAI\'s envelope, AuthenticationError in the SDK', T(), async () => {
  mock.reset().reply({ text: 'should not be reached' });
  const bad = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: 'sk-wrong-key', maxRetries: 0, timeout: 5000 });
  await assert.rejects(bad.chat.completions.create({ model: 'e2e-model', messages: hello }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, `got ${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.status, 401);
    return true;
  });
  const wrong = await post('/v1/chat/completions', { model: 'e2e-model', messages: hello }, { key: 'sk-wrong-key' });
  assert.equal(wrong.status, 401);
  assertOpenAIError(wrong.json, 'wrong key');
  const missing = await post('/v1/chat/completions', { model: 'e2e-model', messages: hello }, { key: null });
  assert.equal(missing.status, 401);
  assertOpenAIError(missing.json, 'missing key');
  const models = await fetch(`${proxy.url}/v1/models`);
  assert.equal(models.status, 401, 'GET /v1/models needs the key too');
  assert.equal(mock.requests.length, 0);
});

test('unknown model: 502 "unknown provider for model X" in OpenAI\'s envelope', T(), async () => {
  mock.reset().reply({ text: 'should not be reached' });
  const r = await post('/v1/chat/completions', { model: 'no-such-model-xyz', messages: hello });
  assert.equal(r.status, 502, r.text);
  assertOpenAIError(r.json, 'unknown model');
  assert.match(r.json.error.message, /no-such-model-xyz/);
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model-xyz', messages: hello }), (e) => e instanceof OpenAI.APIError && e.status === 502);
  assert.equal(mock.requests.length, 0);
});

test('upstream 500: status and JSON body passed through (non-stream and stream)', T(), async () => {
  const upstreamErr = { error: { message: 'upstream exploded', type: 'server_error', param: null, code: 'boom_500' } };
  mock.reset().reply({ error: { status: 500, body: upstreamErr } });
  const r = await post('/v1/chat/completions', { model: 'e2e-fail', messages: hello });
  assert.equal(r.status, 500, r.text);
  assert.deepEqual(r.json, upstreamErr);
  assert.equal(mock.last().body.model, 'mock-fail-500');
  assertUpstreamAuth(mock.last(), ['up-key-E']);
  // A stream that fails before its first byte is still a proper HTTP error.
  const s = await post('/v1/chat/completions', { model: 'e2e-fail-stream', messages: hello, stream: true });
  assert.equal(s.status, 500, s.text);
  assert.deepEqual(s.json, upstreamErr);
  assert.equal(mock.last().body.model, 'mock-fail-500-stream');
});

test('upstream cut mid-stream: the client gets an in-band error event, not a silent end', T(), async () => {
  mock.reset().reply({ text: 'one two three four five six seven', cutAfter: 3 });
  const r = await post('/v1/chat/completions', { model: 'e2e-cut', messages: hello, stream: true });
  assert.equal(r.status, 200);
  assert.match(r.text, /"content":"one "/, 'the deltas before the cut were forwarded');
  const events = r.text.split(/\n\n/).filter((e) => e.startsWith('data: ') && e !== 'data: [DONE]').map((e) => JSON.parse(e.slice(6)));
  const errs = events.filter((e) => e.error);
  assert.equal(errs.length, 1, `one data: {"error":...} event expected; stream was:\n${r.text}`);
  assert.equal(typeof errs[0].error.message, 'string');
});

// ---------------------------------------------------------- streams and memory

test('client disconnect mid-stream: the upstream connection is closed within 2 s', T(), async () => {
  mock.reset().reply({ endless: { intervalMs: 5, bytes: 32 } });
  const ac = new AbortController();
  const s = await client.chat.completions.create({ model: 'e2e-endless', messages: hello, stream: true }, { signal: ac.signal });
  let n = 0;
  let t0 = 0;
  for await (const _ of s) if (++n === 5) { t0 = performance.now(); ac.abort(); }
  const rec = mock.last();
  assert.equal(rec.body.model, 'mock-endless-model');
  await mock.waitForClose(rec, 2000).catch(() => {});
  const closed = rec.abortedAt ?? rec.closedAt;
  assert.ok(closed != null, `the mock never saw its connection closed (it wrote ${rec.framesOut} frames)`);
  assert.ok(closed - t0 < 2000, `closed ${(closed - t0).toFixed(0)} ms after the client left`);
});

test('slow client that stops reading: upstream is paused, proxy memory stays bounded', T(30000), async (t) => {
  mock.reset().reply({ endless: { intervalMs: 1, bytes: 16384, burstBytes: 1 << 20, maxMs: 25000 } });
  const rss0 = proxy.rssKiB();
  const c = await connect(proxy.port);
  c.sock.pause(); // never read: only the kernel buffers fill
  c.write(chatRequest({ key: CLIENT_KEY, body: { model: 'e2e-endless', messages: hello, stream: true } }));
  const rec = await mock.waitForRequest(() => true, 5000);
  const start = performance.now();
  let peak = rss0;
  let prev = 0;
  let stalledSince = null;
  const samples = [];
  while (performance.now() - start < 12000) {
    await sleep(200);
    peak = Math.max(peak, proxy.rssKiB() ?? 0);
    samples.push(rec.bytesOut);
    if (rec.bytesOut - prev < 256 * 1024) stalledSince ??= performance.now(); else stalledSince = null;
    prev = rec.bytesOut;
    if (performance.now() - start > 3000 && stalledSince && performance.now() - stalledSince > 1500) break;
    if (rec.bytesOut > 256 * 1048576 || peak - rss0 > 128 * 1024) { stalledSince = null; break; } // clearly unbounded: stop early
  }
  const growthMiB = (peak - rss0) / 1024;
  const mib = rec.bytesOut / 1048576;
  t.diagnostic(`upstream wrote ${mib.toFixed(1)} MiB (${stalledSince ? 'then stalled' : 'never stalled'}); proxy RSS ${rss0} KiB -> peak ${peak} KiB (+${growthMiB.toFixed(1)} MiB)`);
  assert.ok(stalledSince, `the upstream never stalled: it wrote ${mib.toFixed(1)} MiB in ${((performance.now() - start) / 1000).toFixed(1)} s (no backpressure)`);
  assert.ok(growthMiB < 30, `proxy RSS grew by ${growthMiB.toFixed(1)} MiB`);
  assert.ok(mib < 64, `${mib.toFixed(1)} MiB in flight is not a bounded buffer`);
  assert.ok(rec.abortedAt == null && rec.closedAt == null, 'the upstream stays open while the client is merely slow');
  const t0 = performance.now();
  c.close();
  await mock.waitForClose(rec, 2000).catch(() => {});
  const closed = rec.abortedAt ?? rec.closedAt;
  assert.ok(closed != null && closed - t0 < 2000, 'after the slow client left, the upstream is closed within 2 s');
  assert.equal((await healthz(proxy.url)).status, 200);
});

// ------------------------------------------------------------------ HTTP details

test('Expect: 100-continue gets 100 Continue, then the response', T(), async () => {
  mock.reset().reply({ text: 'continued' });
  const body = JSON.stringify({ model: 'e2e-model', messages: hello });
  const res = await new Promise((resolve, reject) => {
    let got100 = false;
    const req = http.request(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}`, 'content-length': Buffer.byteLength(body), expect: '100-continue' },
    });
    const timer = setTimeout(() => { req.destroy(); reject(new Error('no 100 Continue within 3 s')); }, 3000);
    req.on('continue', () => { got100 = true; clearTimeout(timer); req.end(body); });
    req.on('response', (r) => {
      clearTimeout(timer);
      let t = '';
      r.on('data', (d) => { t += d; });
      r.on('end', () => resolve({ status: r.statusCode, text: t, got100 }));
    });
    req.on('error', reject);
  });
  assert.ok(res.got100, `got ${res.status} without 100 Continue`);
  assert.equal(res.status, 200, res.text);
  assert.equal(JSON.parse(res.text).choices[0].message.content, 'continued');
  assert.deepEqual(mock.last().body.messages, hello);
});

test('chunked request body is reassembled', T(), async () => {
  mock.reset().reply({ text: 'chunked ok' });
  const body = JSON.stringify({ model: 'e2e-model', messages: hello, temperature: 0.5 });
  const res = await new Promise((resolve, reject) => {
    const req = http.request(`${proxy.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
    });
    req.on('response', (r) => {
      let t = '';
      r.on('data', (d) => { t += d; });
      r.on('end', () => resolve({ status: r.statusCode, text: t }));
    });
    req.on('error', reject);
    (async () => {
      const cut = [0, 7, 30, body.length];
      for (let i = 0; i < 3; i++) { req.write(body.slice(cut[i], cut[i + 1])); await sleep(30); }
      req.end();
    })();
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(JSON.parse(res.text).choices[0].message.content, 'chunked ok');
  const up = mock.last();
  assert.deepEqual(up.body.messages, hello);
  assert.equal(up.body.temperature, 0.5);
});

test('keep-alive: one client connection serves several requests; upstream connections are reused', T(), async () => {
  mock.reset().reply({ text: 'ka' });
  const c = await connect(proxy.port);
  try {
    c.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const a = await c.next();
    assert.equal(a.status, 200);
    assert.deepEqual(JSON.parse(a.text), { status: 'ok' });
    for (let i = 0; i < 4; i++) {
      c.write(chatRequest({ key: CLIENT_KEY, body: { model: 'e2e-model', messages: hello } }));
      const r = await c.next();
      assert.equal(r.status, 200, r.text);
      assert.equal(JSON.parse(r.text).choices[0].message.content, 'ka');
    }
    c.write(chatRequest({ key: CLIENT_KEY, body: { model: 'e2e-model', messages: hello, stream: true } }));
    const s = await c.next();
    assert.equal(s.status, 200);
    assert.match(s.text, /data: \[DONE\]/);
    c.write(`GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${CLIENT_KEY}\r\n\r\n`);
    assert.equal((await c.next()).status, 200);
    assert.ok(!c.closed, 'the connection stayed open');
  } finally {
    c.close();
  }
  const conns = new Set(mock.requests.map((r) => r.connId));
  assert.equal(mock.requests.length, 5);
  assert.ok(conns.size <= 2, `5 sequential upstream requests used ${conns.size} connections`);
});

test('HEAD / -> 200, GET / -> banner, OPTIONS -> 204 with CORS headers', T(), async () => {
  const c = await connect(proxy.port);
  try {
    c.write('HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const h = await c.next({ headOnly: true });
    assert.equal(h.status, 200);
    c.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const g = await c.next();
    assert.equal(g.status, 200);
    assert.equal(typeof JSON.parse(g.text).message, 'string');
    c.write('OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.test\r\n' +
      'Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n');
    const o = await c.next();
    assert.equal(o.status, 204);
    assert.equal(o.headers['access-control-allow-origin'], '*');
    assert.match(o.headers['access-control-allow-methods'] || '', /POST/);
    assert.ok(o.headers['access-control-allow-headers'], 'Access-Control-Allow-Headers present');
  } finally {
    c.close();
  }
  const r = await post('/v1/chat/completions', '{}', { key: 'sk-wrong-key' });
  assert.equal(r.headers.get('access-control-allow-origin'), '*', 'CORS headers on ordinary responses too');
});

test('logs never contain a key', T(), async () => {
  const logs = proxy.stdout() + proxy.stderr();
  for (const k of [CLIENT_KEY, 'sk-wrong-key', ...UP_KEYS, 'up-key-E']) assert.ok(!logs.includes(k), `the log contains ${k}`);
});

test('SIGTERM: the server exits 0', T(40000), async () => {
  const r = await proxy.stop({ timeoutMs: 35000 });
  assert.deepEqual([r.code, r.signal, !!r.killed], [0, null, false]);
});
