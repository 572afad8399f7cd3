// The runtime around the routes: TLS, outbound proxies, reload (SIGHUP,
// config edit, broken edit), drain on SIGTERM, timeouts, several workers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, buildConfig, freePort, BIN, SCRATCH } from './lib/proxy.mjs';
import { selfSigned } from './lib/tls.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 30000) => ({ timeout: ms });

let mock;
before(async () => { mock = await startMock(); });
after(async () => { await mock?.close(); });

const chatBody = (model, extra = {}) => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...extra });

async function post(url, body, headers = {}) {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(15000) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, text, json, headers: r.headers };
}

async function waitFor(pred, ms = 5000, step = 50) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return true;
    await sleep(step);
  }
  return false;
}

const compat = (models, extra = {}) => [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-key'], models, ...extra }];

// ---------------------------------------------------------------- TLS

test('TLS: the proxy serves HTTPS with the configured certificate', T(), async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-tls-'));
  const { cert, key } = selfSigned(dir);
  const port = await freePort();
  const cfgPath = path.join(dir, 'config.yaml');
  fs.writeFileSync(cfgPath, buildConfig({ port, authDir: dir, openaiCompat: compat(['tls-model']),
    extra: { tls: { enable: true, cert, key } } }));
  const child = spawn(BIN, ['--config', cfgPath], { cwd: SCRATCH, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const ca = fs.readFileSync(cert);
  const get = (p, body) => new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path: p, method: body ? 'POST' : 'GET', ca, servername: 'localhost',
      checkServerIdentity: () => undefined, headers: body ? { 'content-type': 'application/json' } : {} }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, data }));
    });
    req.on('error', reject);
    req.end(body);
  });
  try {
    assert.ok(await waitFor(async () => { try { return (await get('/healthz')).status === 200; } catch { return false; } }), err);
    mock.reset().reply({ text: 'over tls' });
    const r = await get('/v1/chat/completions', chatBody('tls-model'));
    assert.equal(r.status, 200, r.data);
    assert.equal(JSON.parse(r.data).choices[0].message.content, 'over tls');
    // plain HTTP on the TLS port is not served
    const plain = await fetch(`http://127.0.0.1:${port}/healthz`).then((x) => x.status, () => 'refused');
    assert.notEqual(plain, 200);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.on('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('TLS: a key that does not match the certificate stops start-up with the file named', T(), async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-tls-'));
  const one = selfSigned(dir, { name: '1', cn: 'x' });
  const two = selfSigned(dir, { name: '2', cn: 'x' });
  const cfgPath = path.join(dir, 'config.yaml');
  fs.writeFileSync(cfgPath, buildConfig({ port: await freePort(), authDir: dir,
    extra: { tls: { enable: true, cert: one.cert, key: two.key } } }));
  let out = '';
  try {
    execFileSync(BIN, ['--config', cfgPath], { cwd: SCRATCH, stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
    assert.fail('cliproxy started with a mismatched key');
  } catch (e) {
    out = String(e.stderr);
    assert.equal(e.status, 1);
  }
  assert.match(out, /2key\.pem/);
  assert.match(out, /does not match/);
  fs.rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------- proxies

function startForwardProxy() {
  // A plain HTTP forward proxy: absolute-form request targets.
  const seen = [];
  const srv = http.createServer((req, res) => {
    seen.push(req.url);
    const u = new URL(req.url);
    const up = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(up);
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({ srv, seen, url: `http://127.0.0.1:${srv.address().port}` })));
}

test('proxy-url: global proxy carries upstream requests; per-entry "direct" bypasses it', T(), async () => {
  const fp = await startForwardProxy();
  const proxy = await startProxy({
    openaiCompat: [
      { name: 'via', baseUrl: `${mock.url}/v1`, keys: ['k1'], models: ['via-proxy'] },
      { name: 'direct', baseUrl: `${mock.url}/v1`, keys: [{ key: 'k2', proxyUrl: 'direct' }], models: ['no-proxy'] },
    ],
    extra: { 'proxy-url': fp.url },
  });
  try {
    mock.reset().reply({ text: 'ok' });
    assert.equal((await post(`${proxy.url}/v1/chat/completions`, chatBody('via-proxy'))).status, 200);
    assert.equal(fp.seen.length, 1);
    assert.match(fp.seen[0], /\/v1\/chat\/completions$/);
    assert.equal((await post(`${proxy.url}/v1/chat/completions`, chatBody('no-proxy'))).status, 200);
    assert.equal(fp.seen.length, 1, 'the direct entry must not use the proxy');
    assert.equal(mock.requests.length, 2);
  } finally {
    await proxy.stop();
    fp.srv.close();
  }
});

// ---------------------------------------------------------------- reload

test('SIGHUP reload picks up a new model; a broken edit keeps the working setup', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['first']) });
  try {
    mock.reset().reply({ text: 'ok' });
    assert.equal((await post(`${proxy.url}/v1/chat/completions`, chatBody('second'))).status, 502);
    const cfg = fs.readFileSync(proxy.configPath, 'utf8');
    fs.writeFileSync(proxy.configPath, cfg.replace('"first"', '"second"').replaceAll('alias: "first"', 'alias: "second"'));
    process.kill(proxy.pid, 'SIGHUP');
    assert.ok(await waitFor(async () => (await post(`${proxy.url}/v1/chat/completions`, chatBody('second'))).status === 200),
      proxy.stderr());
    // broken edit: a type error in a known key
    fs.writeFileSync(proxy.configPath, fs.readFileSync(proxy.configPath, 'utf8').replace(/^port: \d+/m, 'port: "nope"'));
    process.kill(proxy.pid, 'SIGHUP');
    assert.ok(await waitFor(() => /reload .* rejected.*port: expected an integer/.test(proxy.stderr())), proxy.stderr());
    assert.equal((await post(`${proxy.url}/v1/chat/completions`, chatBody('second'))).status, 200);
  } finally {
    await proxy.stop();
  }
});

// Each generation's Lua state is closed with LuaJIT's allocator back in
// place, so its arena is unmapped: 40 reloads used to keep ~36 MiB.
test('40 SIGHUP reloads do not grow the resident size', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['hup-model']), extra: { debug: true } });
  try {
    const gen = () => (proxy.stderr().match(/closing Lua generation/g) || []).length;
    const reload = async (n) => {
      const want = gen() + n;
      for (let i = 0; i < n; i++) {
        process.kill(proxy.pid, 'SIGHUP');
        const closed = gen() + 1;
        assert.ok(await waitFor(() => gen() >= closed, 5000), 'a generation was closed');
      }
      assert.ok(gen() >= want);
    };
    await reload(5); // warm-up: the first generations settle the allocator
    const before = proxy.rssKiB();
    await reload(40);
    const after = proxy.rssKiB();
    assert.ok(after - before < 4096, `RSS ${before} KiB -> ${after} KiB after 40 reloads`);
    const r = await post(`${proxy.url}/v1/chat/completions`, chatBody('hup-model'));
    assert.equal(r.status, 200);
  } finally {
    await proxy.stop();
  }
});

test('editing the config file reloads without a signal', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['alpha']) });
  try {
    mock.reset().reply({ text: 'ok' });
    const cfg = fs.readFileSync(proxy.configPath, 'utf8');
    // Editors write a temporary file and rename it over the original.
    const tmp = proxy.configPath + '.tmp';
    fs.writeFileSync(tmp, cfg.replaceAll('"alpha"', '"beta"'));
    fs.renameSync(tmp, proxy.configPath);
    assert.ok(await waitFor(async () => (await post(`${proxy.url}/v1/chat/completions`, chatBody('beta'))).status === 200),
      proxy.stderr());
    assert.equal((await post(`${proxy.url}/v1/chat/completions`, chatBody('alpha'))).status, 502);
  } finally {
    await proxy.stop();
  }
});

// ---------------------------------------------------------------- drain

function streamRequest(url, body) {
  // Resolves with everything the client received once the response ends.
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, data }));
      res.on('error', () => resolve({ status: res.statusCode, data }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('SIGTERM drain: an in-flight stream past the deadline ends with an error event, then exit 0', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['drain-model']), extra: { limits: { 'drain-timeout-seconds': 1 } } });
  mock.reset().reply({ endless: { intervalMs: 20, bytes: 8, maxMs: 20000 } });
  const p = streamRequest(`${proxy.url}/v1/chat/completions`, chatBody('drain-model', { stream: true }));
  assert.ok(await waitFor(() => mock.requests.length === 1 && mock.requests[0].framesOut > 3));
  const t0 = Date.now();
  const stopped = proxy.stop({ timeoutMs: 8000 });
  const r = await p;
  const ex = await stopped;
  assert.equal(r.status, 200);
  assert.match(r.data, /data: \{"choices"|data: \{"id"/, 'some frames were streamed before the drain');
  const last = r.data.trim().split('\n\n').pop();
  assert.match(last, /^data: \{"error":/, `last event: ${last}`);
  assert.match(last, /shutting down/);
  assert.equal(ex.code, 0);
  assert.ok(Date.now() - t0 < 6000);
  assert.ok(await waitFor(() => mock.requests[0].closedAt !== undefined, 3000), 'upstream closed');
});

test('SIGTERM drain: a short in-flight request finishes normally', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['short-model']) });
  mock.reset().reply({ text: 'done in time', delayMs: 400 });
  const p = post(`${proxy.url}/v1/chat/completions`, chatBody('short-model'));
  assert.ok(await waitFor(() => mock.requests.length === 1));
  const stopped = proxy.stop();
  const r = await p;
  assert.equal(r.status, 200);
  assert.equal(r.json.choices[0].message.content, 'done in time');
  assert.equal((await stopped).code, 0);
});

// ---------------------------------------------------------------- timeouts

test('upstream first-byte timeout: an error in the client format, not a hang', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['slow-model']), extra: { limits: { 'upstream-first-byte-timeout-seconds': 0.5 } } });
  try {
    mock.reset().reply({ text: 'too late', delayMs: 3000 });
    const t0 = Date.now();
    const r = await post(`${proxy.url}/v1/chat/completions`, chatBody('slow-model'));
    assert.ok(Date.now() - t0 < 2500, `took ${Date.now() - t0} ms`);
    assert.equal(r.status, 502);
    assert.match(r.json.error.message, /first-byte timeout/);
    assert.ok(await waitFor(() => mock.requests[0].closedAt !== undefined || mock.requests[0].abortedAt !== undefined, 3000));
  } finally {
    await proxy.stop();
  }
});

// The head of a streamed answer is held until its first event and both leave
// in one write: the client's first read holds the status line and the first
// event, on the translated route and on a same-format one through Lua. (Before,
// the head went out one loop turn ahead, and the first read held it alone.)
test('a streamed answer: the head and the first event arrive in one read', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['seg-model']), extra: { 'fast-path': false } });
  const firstRead = (reqPath, body, extra = '') => new Promise((resolve, reject) => {
    const s = net.connect(proxy.port, '127.0.0.1');
    s.setNoDelay(true);
    s.once('error', reject);
    s.once('data', (d) => { s.destroy(); resolve(d.toString('latin1')); });
    s.write(`POST ${reqPath} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  try {
    for (let i = 0; i < 5; i++) {
      // the later frames come 300 ms apart: only the first can share the read
      mock.reset().reply({ text: 'one two three', chunks: 3, eventDelayMs: 300 });
      const a = await firstRead('/v1/messages', JSON.stringify({ model: 'seg-model', max_tokens: 10, stream: true,
        messages: [{ role: 'user', content: 'hi' }] }), 'anthropic-version: 2023-06-01\r\n');
      assert.match(a, /^HTTP\/1\.1 200 /, `translated #${i}`);
      assert.match(a, /\r\n\r\n[0-9a-f]+\r\nevent: message_start\n/, `translated #${i}: the first event in the head's read: ${JSON.stringify(a.slice(-200))}`);
      mock.reset().reply({ text: 'one two three', chunks: 3, eventDelayMs: 300 });
      const c = await firstRead('/v1/chat/completions', chatBody('seg-model', { stream: true }));
      assert.match(c, /^HTTP\/1\.1 200 /, `chat #${i}`);
      assert.match(c, /\r\n\r\n[0-9a-f]+\r\ndata: \{/, `chat #${i}: the first event in the head's read: ${JSON.stringify(c.slice(-200))}`);
    }
    // HTTP/1.0: no chunks, the end of the body is the close; the held head
    // goes out with the first event's bytes as they are, and the whole
    // stream follows
    mock.reset().reply({ text: 'one two three', chunks: 3, eventDelayMs: 50 });
    const body = JSON.stringify({ model: 'seg-model', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const all = await new Promise((resolve, reject) => {
      const s = net.connect(proxy.port, '127.0.0.1');
      const got = [];
      s.once('error', reject);
      s.on('data', (d) => got.push(d));
      s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      s.write(`POST /v1/messages HTTP/1.0\r\nContent-Type: application/json\r\nanthropic-version: 2023-06-01\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });
    assert.match(all, /^HTTP\/1\.1 200 /);
    const [head, rest] = all.split('\r\n\r\n', 2);
    assert.doesNotMatch(head, /transfer-encoding/i, head);
    assert.match(rest, /^event: message_start\n/, rest.slice(0, 100));
    assert.match(all, /event: message_stop\n/);
    assert.equal((all.match(/"text_delta"/g) || []).length, 3);
  } finally {
    await proxy.stop();
  }
});

// A Claude client of another upstream reads its input usage from message_start:
// the local estimate, counted in a task while the upstream answers. It equals
// count_tokens' local answer for the same body, small (counted inline) and
// past 64 KB of text (counted in the threadpool).
test('translated stream: message_start carries the local input estimate, small and large bodies', T(60000), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['est-model']) });
  try {
    const hdrs = { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' };
    for (const size of [1, 40000]) {
      const body = { model: 'est-model', max_tokens: 10, system: 'You are terse. '.repeat(size),
        messages: [{ role: 'user', content: 'count me' }] };
      const ct = await post(`${proxy.url}/v1/messages/count_tokens`, JSON.stringify(body), hdrs);
      assert.equal(ct.status, 200, ct.text);
      mock.reset().reply({ text: 'ok' });
      const r = await post(`${proxy.url}/v1/messages`, JSON.stringify({ ...body, stream: true }), hdrs);
      assert.equal(r.status, 200);
      const start = r.text.split('\n').find((l) => l.startsWith('data: ') && l.includes('"message_start"'));
      assert.ok(start, r.text.slice(0, 300));
      const usage = JSON.parse(start.slice(6)).message.usage;
      assert.ok(ct.json.input_tokens > size, `count_tokens: ${ct.text}`);
      assert.equal(usage.input_tokens, ct.json.input_tokens, `size ${size}`);
    }
  } finally {
    await proxy.stop();
  }
});

test('nonstream-keepalive-interval: blank lines while the answer is awaited, then the answer', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['ka-model']),
    extra: { 'nonstream-keepalive-interval': 1, 'request-retry': 0 } });
  try {
    assert.match(proxy.stderr(), /fast path off: nonstream-keepalive-interval is set/);
    mock.reset().reply({ text: 'slow answer', delayMs: 2500 });
    const t0 = Date.now();
    const res = await fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST',
      headers: { 'content-type': 'application/json' }, body: chatBody('ka-model'), signal: AbortSignal.timeout(15000) });
    const headAt = Date.now() - t0;
    assert.equal(res.status, 200);
    assert.ok(headAt >= 800 && headAt < 2200, `head after ${headAt} ms`); // with the first blank line
    assert.equal(res.headers.get('content-type'), 'application/json');
    const text = await res.text();
    assert.match(text, /^\n\n\{/); // at 1 s and 2 s, then the JSON
    assert.equal(JSON.parse(text).choices[0].message.content, 'slow answer');
    // A quick answer has no blank line and keeps its own status.
    mock.reply({ error: { status: 400, message: 'bad quickly' } });
    let r = await post(`${proxy.url}/v1/chat/completions`, chatBody('ka-model'));
    assert.equal(r.status, 400);
    assert.match(r.text, /^\{/);
    // An error after the first blank line: the status is already 200, the
    // body is the error in the client's envelope.
    mock.reply({ error: { status: 500, message: 'broke late' }, delayMs: 1500 });
    r = await post(`${proxy.url}/v1/chat/completions`, chatBody('ka-model'));
    assert.equal(r.status, 200);
    assert.match(r.text, /^\n\{/);
    assert.equal(r.json.error.message, 'broke late');
  } finally {
    await proxy.stop();
  }
});

test('header timeout (slowloris): 408 and the connection closes', T(), async () => {
  const proxy = await startProxy({ extra: { limits: { 'header-timeout-seconds': 0.5 } } });
  try {
    const sock = net.connect(proxy.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    let data = '';
    sock.on('data', (d) => { data += d; });
    const closed = new Promise((r) => sock.once('close', r));
    const t0 = Date.now();
    await Promise.race([closed, sleep(5000)]);
    assert.match(data, /^HTTP\/1\.1 408 /);
    assert.ok(Date.now() - t0 < 4000);
    assert.equal((await fetch(`${proxy.url}/healthz`)).status, 200);
  } finally {
    await proxy.stop();
  }
});

// ---------------------------------------------------------------- workers

test('a 408 before the request is complete: the client\'s envelope, CORS, a true Content-Length', T(), async () => {
  const proxy = await startProxy({ extra: { limits: { 'header-timeout-seconds': 0.5 } } });
  try {
    const cases = [
      ['/v1/messages', { type: 'error', error: { type: 'invalid_request_error', message: 'request timeout' } }],
      ['/v1beta/models/g:generateContent', { error: { code: 408, message: 'request timeout', status: 'INVALID_ARGUMENT' } }],
      ['/v1/chat/completions', { error: { message: 'request timeout', type: 'invalid_request_error', param: null, code: null } }],
    ];
    for (const [path, want] of cases) {
      const sock = net.connect(proxy.port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.write(`POST ${path} HTTP/1.1\r\nHost: x\r\n`);
      let data = '';
      sock.on('data', (d) => { data += d; });
      await Promise.race([new Promise((r) => sock.once('close', r)), sleep(5000)]);
      const [head, body] = data.split('\r\n\r\n');
      assert.match(head, /^HTTP\/1\.1 408 /, path);
      assert.match(head, /\r\nAccess-Control-Allow-Origin: \*\r\n/i, path);
      assert.match(head, /\r\nContent-Type: application\/json\r\n/i, path);
      assert.equal(Number(/Content-Length: (\d+)/i.exec(head)[1]), Buffer.byteLength(body), path);
      assert.deepEqual(JSON.parse(body), want, path);
    }
  } finally {
    await proxy.stop();
  }
});

test('workers: 2 serves requests on both loops and exits 0 on SIGTERM', T(), async () => {
  const proxy = await startProxy({ openaiCompat: compat(['w-model']), extra: { workers: 2 } });
  try {
    mock.reset().reply({ text: 'ok' });
    const rs = await Promise.all(Array.from({ length: 40 }, () => post(`${proxy.url}/v1/chat/completions`, chatBody('w-model'))));
    assert.ok(rs.every((r) => r.status === 200));
    assert.match(proxy.stderr(), /with 2 worker\(s\)/);
  } finally {
    assert.equal((await proxy.stop()).code, 0);
  }
});

// ---------------------------------------------------------------- idle and stalled clients

test('keep-alive idle timeout closes a connection that sends nothing more', T(), async () => {
  const proxy = await startProxy({ extra: { limits: { 'keepalive-timeout-seconds': 0.5 } } });
  try {
    const sock = net.connect(proxy.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    let data = '';
    sock.on('data', (d) => { data += d; });
    const closed = new Promise((r) => sock.once('close', r));
    sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const t0 = Date.now();
    await Promise.race([closed, sleep(5000)]);
    assert.match(data, /^HTTP\/1\.1 200 .*Connection: keep-alive/s, 'the first answer keeps the connection');
    const idle = Date.now() - t0;
    assert.ok(sock.destroyed || sock.readyState === 'closed', 'closed by the server');
    assert.ok(idle >= 400 && idle < 3000, `closed after ${idle} ms`);
  } finally {
    await proxy.stop();
  }
});

test('write-stall timeout: a client that stops reading is cut off and the upstream cancelled', T(), async () => {
  const proxy = await startProxy({
    openaiCompat: compat(['stall-model']),
    extra: { limits: { 'write-stall-timeout-seconds': 1, 'write-buffer-high-bytes': 65536, 'write-buffer-low-bytes': 16384 } },
  });
  try {
    mock.reset().reply({ endless: { intervalMs: 1, bytes: 16384, burstBytes: 1 << 20, maxMs: 20000 } });
    const sock = net.connect(proxy.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.pause(); // never read
    const body = chatBody('stall-model', { stream: true });
    sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    assert.ok(await waitFor(() => mock.requests.length === 1, 5000));
    const rec = mock.requests[0];
    // The kernel buffers fill, then nothing moves for 1 s: the proxy gives up.
    assert.ok(await waitFor(() => rec.closedAt !== undefined || rec.abortedAt !== undefined, 15000, 100),
      `upstream still open after 15 s (${(rec.bytesOut / 1048576).toFixed(1)} MiB written)`);
    assert.ok(await waitFor(() => /client stopped reading for too long/.test(proxy.stderr()), 3000), proxy.stderr());
    sock.destroy();
    assert.equal((await fetch(`${proxy.url}/healthz`)).status, 200);
  } finally {
    await proxy.stop();
  }
});

// ---------------------------------------------------------------- start-up banner

test('start-up banner: the models served and how to point each CLI at them, never a key', T(), async () => {
  const proxy = await startProxy({ apiKeys: ['sk-banner-secret-1'], openaiCompat: compat(['kimi-k2', 'glm-4']) });
  try {
    // the log is flushed every 100 ms
    assert.ok(await waitFor(() => /OpenAI SDKs:/.test(proxy.stderr() + proxy.stdout())), proxy.stderr());
    const log = proxy.stderr() + proxy.stdout();
    assert.match(log, /models \(2\): glm-4, kimi-k2/);
    assert.match(log, new RegExp(`ANTHROPIC_BASE_URL=http://127\\.0\\.0\\.1:${proxy.port} ANTHROPIC_AUTH_TOKEN=<one of your api-keys> ANTHROPIC_MODEL=glm-4 claude`));
    assert.match(log, new RegExp(`GOOGLE_GEMINI_BASE_URL=http://127\\.0\\.0\\.1:${proxy.port} `));
    assert.match(log, new RegExp(`base_url = "http://127\\.0\\.0\\.1:${proxy.port}/v1"`));
    assert.doesNotMatch(log, /sk-banner-secret-1|up-key/);
    assert.doesNotMatch(log, /every client is accepted/);
    assert.match(log, new RegExp(`control panel: http://127\\.0\\.0\\.1:${proxy.port}/management\\.html \\(set remote-management\\.secret-key`));
  } finally { await proxy.stop(); }
  const open = await startProxy({ openaiCompat: [] });
  try {
    assert.ok(await waitFor(() => /OpenAI SDKs:/.test(open.stderr() + open.stdout())), open.stderr());
    const log = open.stderr() + open.stdout();
    assert.match(log, /no models are served yet: add an upstream/);
    assert.match(log, /api-keys is empty: every client is accepted/);
  } finally { await open.stop(); }
});
