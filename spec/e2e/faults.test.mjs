// Faults against the real binary (issue 15). Each promise is written above
// its test; docs/reliability.md lists them all.
//
// Promise: whatever the upstream does (resets before its headers, halfway
// through a stream or a JSON body, never answers, is not resolvable, speaks
// no TLS, answers 429 on every account), the client gets a well-formed error
// in its own API's envelope: a JSON error body when nothing was sent yet, an
// error event in its stream format after the first byte. The process keeps
// serving, and repeating the faults does not grow its memory.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, healthz } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 60000) => ({ timeout: ms });

let mock;
let resetter; // accepts, reads the request, resets the connection
let silent; // a TCP port that speaks no TLS
let proxy;

before(async () => {
  mock = await startMock();
  resetter = net.createServer((s) => {
    s.once('data', () => s.resetAndDestroy());
    s.on('error', () => {});
  });
  await new Promise((r) => resetter.listen(0, '127.0.0.1', r));
  silent = net.createServer((s) => {
    s.on('data', () => s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n'));
    s.on('error', () => {});
  });
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const entry = (name, baseUrl, alias, keys = ['k']) => ({ name, baseUrl, keys, models: [{ name: 'up', alias }] });
  proxy = await startProxy({
    openaiCompat: [
      // one entry per fault: a fault cools its accounts down, and the next
      // fault must meet fresh ones
      ...['mocked', 'timeout-model', 'cutjson-model', 'cutstream-model', 'storm-model']
        .map((alias) => entry(`mock-${alias}`, `${mock.url}/v1`, alias, ['a', 'b', 'c'])),
      entry('reset', `http://127.0.0.1:${resetter.address().port}/v1`, 'reset-model'),
      entry('dns', 'http://cpx-fault-test.invalid/v1', 'dns-model'),
      entry('tls', `https://127.0.0.1:${silent.address().port}/v1`, 'tls-model'),
    ],
    extra: {
      'request-retry': 2,
      limits: { 'upstream-first-byte-timeout-seconds': 0.5, 'upstream-connect-timeout-seconds': 2 },
    },
  });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
  resetter?.close();
  silent?.close();
});

// ---- the three client APIs: request builders and envelope checks ----------

const CLIENTS = {
  openai: {
    req: (model, stream) => ({ path: '/v1/chat/completions',
      body: { model, stream, messages: [{ role: 'user', content: 'hi' }] } }),
    body(j) {
      assert.equal(typeof j.error, 'object', JSON.stringify(j));
      assert.equal(typeof j.error.message, 'string');
      assert.ok(j.error.message.length > 0);
    },
    event(frames) {
      const last = frames.filter((f) => f.data !== '[DONE]').pop();
      assert.ok(last, 'no frames');
      this.body(JSON.parse(last.data));
    },
  },
  claude: {
    req: (model, stream) => ({ path: '/v1/messages',
      body: { model, stream, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] } }),
    body(j) {
      assert.equal(j.type, 'error', JSON.stringify(j));
      assert.equal(typeof j.error.type, 'string');
      assert.equal(typeof j.error.message, 'string');
    },
    event(frames) {
      const last = frames.pop();
      assert.equal(last.event, 'error', JSON.stringify(last));
      this.body(JSON.parse(last.data));
    },
  },
  gemini: {
    req: (model, stream) => ({ path: `/v1beta/models/${model}:${stream ? 'streamGenerateContent?alt=sse' : 'generateContent'}`,
      body: { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] } }),
    body(j) {
      assert.equal(typeof j.error, 'object', JSON.stringify(j));
      assert.equal(typeof j.error.code, 'number');
      assert.equal(typeof j.error.message, 'string');
      assert.equal(typeof j.error.status, 'string');
    },
    event(frames) {
      const last = frames.pop();
      assert.ok(last, 'no frames');
      this.body(JSON.parse(last.data));
    },
  },
};

function sseFrames(text) {
  return text.split(/\r?\n\r?\n/).filter((b) => b.trim() && !b.startsWith(':')).map((b) => {
    const f = {};
    for (const line of b.split(/\r?\n/)) {
      const m = line.match(/^(\w+): ?(.*)$/);
      if (m) f[m[1]] = f[m[1]] !== undefined && m[1] === 'data' ? `${f.data}\n${m[2]}` : m[2];
    }
    return f;
  }).filter((f) => f.data !== undefined);
}

async function callAt(p, client, model, stream, timeoutMs = 20000) {
  const { path, body } = CLIENTS[client].req(model, stream);
  const r = await fetch(`${p.url}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: r.status, type: r.headers.get('content-type') || '', text: await r.text(), headers: r.headers };
}
const call = (client, model, stream) => callAt(proxy, client, model, stream);

// Checks the answer to a failed upstream: before the first byte a JSON error
// with a 4xx/5xx status; after it (streams only) an error event at the end.
function assertFailed(client, r, { midStream = false } = {}) {
  const c = CLIENTS[client];
  if (midStream) {
    assert.equal(r.status, 200, r.text);
    assert.match(r.type, /text\/event-stream/);
    c.event(sseFrames(r.text));
  } else {
    assert.ok(r.status >= 400 && r.status < 600, `status ${r.status}: ${r.text}`);
    assert.match(r.type, /application\/json/, r.text);
    c.body(JSON.parse(r.text));
  }
}

const FAULTS = [
  { name: 'upstream resets before its headers', model: 'reset-model', mid: false },
  { name: 'upstream name does not resolve', model: 'dns-model', mid: false },
  { name: 'upstream speaks no TLS', model: 'tls-model', mid: false },
  { name: 'upstream never answers (first-byte timeout)', model: 'timeout-model', mid: false,
    setup: () => mock.reset().reply({ text: 'late', delayMs: 3000 }) },
  { name: 'upstream resets halfway through the JSON body', model: 'cutjson-model', mid: false, stream: false,
    setup: () => mock.reset().reply({ text: 'x'.repeat(4000), cutAfter: 1 }) },
  { name: 'upstream resets mid-stream', model: 'cutstream-model', mid: true, stream: true,
    setup: () => mock.reset().reply({ text: 'hello there, this is streamed', chunks: 6, cutAfter: 3 }) },
  { name: 'every account answers 429', model: 'storm-model', mid: false,
    setup: () => mock.reset().reply({ error: { status: 429, message: 'slow down', headers: { 'retry-after': '1' } } }),
    check: (r) => assert.equal(r.status, 429) },
];

for (const f of FAULTS) {
  for (const client of Object.keys(CLIENTS)) {
    for (const stream of f.stream === undefined ? [false, true] : [f.stream]) {
      test(`${f.name}: ${client}${stream ? ' stream' : ''} gets its own error envelope`, T(), async () => {
        f.setup?.();
        const r = await call(client, f.model, stream);
        assertFailed(client, r, { midStream: f.mid });
        f.check?.(r);
        assert.equal((await healthz(proxy.url)).status, 200);
      });
    }
  }
}

// Promise: a client that goes away at any phase costs nothing afterwards:
// its upstream transfer is cancelled and the next request is served.
test('a client that disconnects while sending, while waiting, and mid-stream', T(), async () => {
  // while sending its body
  await new Promise((resolve) => {
    const s = net.connect(proxy.port, '127.0.0.1', () => {
      s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
        + 'Content-Length: 100000\r\n\r\n{"model":"mocked","messages":[');
      setTimeout(() => { s.destroy(); resolve(); }, 50);
    });
    s.on('error', () => {});
  });
  // while the upstream has not answered yet
  mock.reset().reply({ text: 'late', delayMs: 400 });
  const ac = new AbortController();
  const p = fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST', signal: ac.signal,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mocked', messages: [{ role: 'user', content: 'hi' }] }) }).catch(() => null);
  const rec = await mock.waitForRequest();
  ac.abort();
  await p;
  await mock.waitForClose(rec, 3000);
  // mid-stream
  mock.reset().reply({ endless: { intervalMs: 5, bytes: 16, maxMs: 20000 } });
  const ac2 = new AbortController();
  const r = await fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST', signal: ac2.signal,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mocked', stream: true, messages: [{ role: 'user', content: 'hi' }] }) });
  const reader = r.body.getReader();
  await reader.read();
  const rec2 = await mock.waitForRequest();
  ac2.abort();
  await mock.waitForClose(rec2, 3000);
  // and the next one is served
  mock.reset().reply({ text: 'still here' });
  const ok = await call('openai', 'mocked', false);
  assert.equal(ok.status, 200, ok.text);
  assert.equal(JSON.parse(ok.text).choices[0].message.content, 'still here');
});

// Promise: a reload under load changes nothing for requests in flight: every
// stream started before the first of two SIGHUPs, or between them, and held
// open across both, completes normally. Nothing here waits for a time: the
// upstream holds each stream after its first frame until the test lets them
// all go, each SIGHUP waits for the streams to be open and is followed by
// the workers' "reloaded" lines, and the proxy has its own config without
// the short first-byte timeout the faults above need (its limits only bound
// a hang).
test('SIGHUP twice under 40 concurrent streams: every stream completes', T(120000), async () => {
  const p = await startProxy({
    openaiCompat: [{ name: 'mock-reload', baseUrl: `${mock.url}/v1`, keys: ['a', 'b', 'c'],
                     models: [{ name: 'up', alias: 'mocked' }] }],
    extra: { workers: 2 },
  });
  try {
    let release;
    const hold = new Promise((r) => { release = r; });
    mock.reset().reply({ text: 'a reply streamed in many small pieces', chunks: 12, hold });
    const held = () => mock.requests.filter((q) => q.framesOut >= 1 && !q.finishedAt).length;
    const reloads = () => (p.stderr().match(/reloaded \(/g) || []).length;
    const runs = [];
    const start = (n) => {
      for (let i = runs.length, end = runs.length + n; i < end; i++) {
        runs.push(callAt(p, ['openai', 'claude', 'gemini'][i % 3], 'mocked', true, 60000));
      }
    };
    const reload = async () => {
      const r0 = reloads();
      process.kill(p.pid, 'SIGHUP');
      await until(() => reloads() >= r0 + 2, 'both workers to log "reloaded"', 60000);
    };
    start(20);
    await until(() => held() >= 20, '20 streams open upstream', 60000);
    await reload();
    start(20);
    await until(() => held() >= 40, '40 streams open upstream', 60000);
    await reload();
    assert.equal(held(), 40, 'every stream was still open across both reloads');
    release();
    const results = await Promise.all(runs);
    for (const [i, r] of results.entries()) {
      assert.equal(r.status, 200, `stream ${i}: ${r.text}`);
      const frames = sseFrames(r.text);
      assert.ok(frames.length > 3, `stream ${i}: ${r.text}`);
      assert.doesNotMatch(r.text, /"error"/, `stream ${i} failed: ${r.text}`);
    }
    assert.equal((await healthz(p.url)).status, 200);
  } finally {
    await p.stop();
  }
});

// Promise: memory stays bounded under repeated faults: the resident size
// after the third round of every fault is within 16 MiB of the first's.
test('repeating every fault does not grow memory', T(120000), async () => {
  const round = async () => {
    for (const f of FAULTS) {
      f.setup?.();
      await Promise.all(Object.keys(CLIENTS).map((c) => call(c, f.model, f.stream ?? true)));
    }
  };
  await round();
  const first = proxy.rssKiB();
  await round();
  await round();
  const third = proxy.rssKiB();
  assert.ok(first > 0 && third > 0);
  assert.ok(third - first < 16 * 1024, `RSS grew from ${first} KiB to ${third} KiB`);
  assert.equal((await healthz(proxy.url)).status, 200);
});
