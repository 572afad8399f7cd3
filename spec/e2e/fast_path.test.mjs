// The C fast path (runtime/net/cpx_lane.c, runtime/net/cpx_h1.c, lua/rt/lane.lua)
// end to end: POST /v1/chat/completions for models served only by plain-http
// openai-compatibility entries is answered without entering Lua; requests it
// serves end their access-log line with " | fast". Failures before the first
// byte to the client are handed to the Lua pipeline (retries, cooldowns,
// error answers).
//
// One main proxy (fast path on, client api-keys) serves every alias below;
// each case has its own upstream model name (cooldowns are per account and
// upstream model), and the cases that count connections or break the wire
// have their own plain node:http upstream:
//   fp    (up-key-1) -> mock      fp-model=up-model, fp-endless=up-endless
//   ho    (ho-1, ho-2) -> mock    ho-429=up-429
//   one   (one-1) -> mock         ho-500=up-500, ho-500s=up-500s
//   dead  (dead-1) -> closed port ho-dead=up-dead
//   cu    (cu-1) -> edge server   ho-sse=up-sse-err, ho-sse-split, edge-chunked,
//                                 edge-big, edge-trunc-small, edge-trunc-big,
//                                 edge-drip, edge-split, edge-close
//   rw    (rw-1) -> raw TCP server  raw-eof (close-delimited), raw-100 (100 Continue)
//   pl    (pl-1) -> pool server   pool-m=up-pool
//   ka    (ka-1) -> server closing idle connections after 100 ms   ka-m=up-ka
//   rs    (rs-1) -> server dropping reused connections   rs-m=up-rs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, freePort, healthz } from './lib/proxy.mjs';
import { connect, chatRequest } from './lib/raw_http.mjs';

const CLIENT_KEY = 'sk-client-fast-e2e';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 15000) => ({ timeout: ms });

// ------------------------------------------------------------------ helpers

// Access-log lines of chat completions (complete lines only).
const ACCESS = /\| POST \/v1\/chat\/completions \|/;
function accessLines(p) {
  const s = p.stderr();
  return s.slice(0, s.lastIndexOf('\n') + 1).split('\n').filter((l) => ACCESS.test(l));
}
const isFast = (line) => / \| fast( \| |$)/.test(line);

// Runs fn and returns its result with the n access-log lines it produced.
async function logged(p, fn, n = 1) {
  const n0 = accessLines(p).length;
  const res = await fn();
  const end = Date.now() + 3000;
  while (accessLines(p).length < n0 + n && Date.now() < end) await sleep(10);
  const lines = accessLines(p).slice(n0);
  assert.equal(lines.length, n, `expected ${n} new access-log line(s), got:\n${lines.join('\n')}`);
  return { res, lines, line: lines[0] };
}

async function post(p, body, { key = CLIENT_KEY, headers = {}, timeoutMs = 8000 } = {}) {
  const r = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}), ...headers },
    body,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const buf = Buffer.from(await r.arrayBuffer());
  const text = buf.toString('utf8');
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, headers: r.headers, buf, text, json };
}

const chatBody = (model, extra = {}) => JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...extra });

function assertOpenAIError(body, where) {
  assert.equal(typeof body, 'object', `${where}: body is JSON`);
  assert.ok(body && typeof body.error === 'object' && body.error, `${where}: {"error":{...}} envelope, got ${JSON.stringify(body)}`);
  assert.equal(typeof body.error.message, 'string', `${where}: error.message`);
  assert.equal(typeof body.error.type, 'string', `${where}: error.type`);
  assert.ok('code' in body.error, `${where}: error.code present`);
}

// Listens on a free loopback port; s gets port, url and close() (which
// also drops the connections still open, tracked in s.sockets).
async function listenOn(srv, s) {
  await new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(0, '127.0.0.1', resolve); });
  s.port = srv.address().port;
  s.url = `http://127.0.0.1:${s.port}`;
  s.close = async () => {
    for (const sock of s.sockets) sock.destroy();
    await new Promise((r) => srv.close(r));
  };
  return s;
}

// A plain node:http upstream that records connections and requests.
// idleCloseMs: the server closes a keep-alive connection idle that long.
async function startServer(handler, { idleCloseMs } = {}) {
  const srv = http.createServer({ requestTimeout: 0 });
  const s = { conns: [], requests: [], sockets: new Set() };
  srv.on('connection', (sock) => {
    const c = { id: s.conns.length + 1, openedAt: performance.now(), closedAt: null, served: 0 };
    s.conns.push(c);
    sock._c = c;
    s.sockets.add(sock);
    sock.on('close', () => { c.closedAt = performance.now(); s.sockets.delete(sock); });
  });
  srv.on('request', async (req, res) => {
    const chunks = [];
    for await (const ch of req) chunks.push(ch);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body = null;
    try { body = JSON.parse(raw); } catch {}
    const conn = req.socket._c;
    const rec = { conn, nOnConn: ++conn.served, model: body?.model, body, raw, headers: req.headers, closedAt: null, finished: false };
    s.requests.push(rec);
    res.on('close', () => { rec.closedAt = performance.now(); });
    res.on('finish', () => {
      rec.finished = true;
      if (idleCloseMs != null) {
        const n = conn.served;
        setTimeout(() => { if (conn.served === n) req.socket.destroy(); }, idleCloseMs);
      }
    });
    try { await handler(req, res, rec); } catch (e) { rec.error = String(e); res.destroy(); }
  });
  return listenOn(srv, s);
}

// A raw TCP upstream for framings node:http does not produce: a body
// delimited by the close of the connection, and a 100 Continue before the
// answer.
const EOF_BODY = bigJson(100 * 1024);
async function startRawServer() {
  const s = { conns: 0, requests: [], sockets: new Set() };
  const srv = net.createServer((sock) => {
    s.conns++;
    s.sockets.add(sock);
    sock.on('close', () => s.sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const he = buf.indexOf('\r\n\r\n');
        if (he < 0) return;
        const head = buf.subarray(0, he).toString('latin1');
        const len = Number(head.match(/\r\ncontent-length:\s*(\d+)/i)?.[1] ?? 0);
        if (buf.length < he + 4 + len) return;
        const body = buf.subarray(he + 4, he + 4 + len).toString('utf8');
        buf = buf.subarray(he + 4 + len);
        let model = null;
        try { model = JSON.parse(body).model; } catch {}
        s.requests.push({ head, body, model });
        if (model === 'up-eof') {
          sock.end(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n'), EOF_BODY]));
          return;
        }
        const out = JSON.stringify({ id: 'after-100', object: 'chat.completion', choices: [] });
        sock.write('HTTP/1.1 100 Continue\r\n\r\n');
        setTimeout(() => sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(out)}\r\n\r\n${out}`), 20);
      }
    });
  });
  return listenOn(srv, s);
}

function sseChunk(id, content, finish = null) {
  return `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 1700000000, model: 'up', choices: [{ index: 0, delta: content == null ? {} : { content }, finish_reason: finish }] })}\n\n`;
}

function okJson(res, obj, ct = 'application/json') {
  const b = Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj));
  res.writeHead(200, { 'content-type': ct, 'content-length': b.length });
  res.end(b);
}

// A body of n bytes that is not periodic at any small period (so a lost or
// repeated piece shows), inside a JSON envelope.
function bigJson(n) {
  const head = '{"id":"chatcmpl-big","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"';
  const tail = '"},"finish_reason":"stop"}]}';
  let i = 0;
  const parts = [];
  let len = head.length + tail.length;
  while (len < n) {
    const piece = `${(i * 2654435761 % 4294967296).toString(36)}.${i} `;
    parts.push(piece);
    len += piece.length;
    i++;
  }
  const s = head + parts.join('') + tail;
  return Buffer.from(s.slice(0, head.length + (n - head.length - tail.length)) + tail);
}

// ------------------------------------------------------------------ fixtures

// Deterministic upstream answers (for byte comparisons between proxies).
const RAW_JSON = '{\n  "id": "chatcmpl-fixed",\n  "object": "chat.completion",\n  "created": 1700000000,\n  "model": "up-model",\n' +
  '  "choices": [{"index":0,"message":{"role":"assistant","content":"Grüße 🌍 \\"quoted\\" \\\\ \\u00e9"},"finish_reason":"stop"}],\n' +
  '  "usage": {"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}\n}\n';
const RAW_CT = 'application/json; charset=utf-8';
const RAW_SSE = sseChunk('c1', '') + sseChunk('c1', 'Grüße ') + sseChunk('c1', '🌍 "x"') + sseChunk('c1', null, 'stop') + 'data: [DONE]\n\n';

// Per upstream model: what the mock answers (a spec or req => spec).
const routes = {};
const state = { first429: null };
const keyOf = (req) => (req.headers.authorization || '').replace(/^Bearer /, '');

const BIG_BODY = bigJson(2 * 1048576);
const SPLIT_SSE = Buffer.from(sseChunk('sp', bigJson(150 * 1024).toString('latin1')) + sseChunk('sp', 'tail')
  + sseChunk('sp', null, 'stop') + 'data: [DONE]\n\n');
const CHUNKED_BODY = bigJson(300 * 1024);
let stopDrip = false;

async function edgeHandler(req, res, rec) {
  switch (rec.model) {
    case 'up-sse-err': {
      // 200 stream whose first event is an error; the stream then stays open.
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write('data: {"error":{"message":"boom","type":"server_error"}}\n\n');
      const end = performance.now() + 3000;
      while (!res.destroyed && performance.now() < end) await sleep(20);
      if (!res.destroyed) res.end('data: [DONE]\n\n');
      return;
    }
    case 'up-sse-err-split': {
      // The error event arrives in three pieces.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const ev = 'data: {"error":{"message":"split boom","type":"server_error"}}\n\n';
      res.write(ev.slice(0, 9));
      await sleep(30);
      res.write(ev.slice(9, 30));
      await sleep(30);
      res.write(ev.slice(30));
      const end = performance.now() + 3000;
      while (!res.destroyed && performance.now() < end) await sleep(20);
      if (!res.destroyed) res.end();
      return;
    }
    case 'up-split': {
      // A first event of ~150 KB arriving in small pieces, then the rest.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let i = 0; i < SPLIT_SSE.length; i += 7001) {
        res.write(SPLIT_SSE.subarray(i, i + 7001));
        if (i % 5 === 0) await sleep(1);
        else await new Promise((r) => setImmediate(r));
      }
      res.end();
      return;
    }
    case 'up-close':
      res.writeHead(200, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify({ id: `close-${rec.conn.id}`, object: 'chat.completion', choices: [] }));
      return;
    case 'up-chunked': {
      res.writeHead(200, { 'content-type': 'application/json' }); // no length: chunked
      const n = 8;
      const size = Math.ceil(CHUNKED_BODY.length / n);
      for (let i = 0; i < CHUNKED_BODY.length; i += size) {
        res.write(CHUNKED_BODY.subarray(i, i + size));
        await sleep(5);
      }
      res.end();
      return;
    }
    case 'up-big':
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': BIG_BODY.length });
      res.end(BIG_BODY);
      return;
    case 'up-trunc-small':
    case 'up-trunc-big': {
      const full = rec.model === 'up-trunc-big' ? BIG_BODY : CHUNKED_BODY.subarray(0, 20000);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': full.length });
      res.write(full.subarray(0, full.length >> 1));
      await sleep(50);
      res.socket.destroy();
      return;
    }
    case 'up-drip': {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const end = performance.now() + 20000;
      let k = 0;
      while (!res.destroyed && !stopDrip && performance.now() < end) {
        res.write(sseChunk('drip', `tick ${k++} `));
        await sleep(20);
      }
      if (!res.destroyed) res.end('data: [DONE]\n\n');
      return;
    }
    default:
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `edge: no model ${rec.model}`, type: 'invalid_request_error', code: null } }));
  }
}

// Answers chat requests: JSON, or a short chunked SSE stream.
async function simpleHandler(req, res, rec) {
  if (rec.body?.stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(sseChunk(`s${rec.nOnConn}`, 'ok'));
    await sleep(2);
    res.write(sseChunk(`s${rec.nOnConn}`, null, 'stop'));
    res.end('data: [DONE]\n\n');
    return;
  }
  if (rec.body?.metadata?.delayMs) await sleep(rec.body.metadata.delayMs);
  okJson(res, { id: `r-${rec.conn.id}-${rec.nOnConn}`, object: 'chat.completion', echo: rec.body?.metadata?.tag ?? null,
    choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }] });
}

let mock, proxy, edge, poolSrv, kaSrv, rsSrv, rawSrv, deadPort;
const MODELS = ['fp-model', 'fp-endless', 'ho-429', 'ho-500', 'ho-500s', 'ho-dead', 'ho-sse', 'ho-sse-split', 'pool-m', 'ka-m', 'rs-m',
  'edge-split', 'edge-close', 'raw-eof', 'raw-100',
  'edge-chunked', 'edge-big', 'edge-trunc-small', 'edge-trunc-big', 'edge-drip'];

function openaiCompat() {
  return [
    { name: 'fp', baseUrl: `${mock.url}/v1`, keys: ['up-key-1'], headers: { 'X-Entry': 'fp-entry' },
      models: [{ name: 'up-model', alias: 'fp-model' }, { name: 'up-endless', alias: 'fp-endless' }] },
    { name: 'ho', baseUrl: `${mock.url}/v1`, keys: ['ho-1', 'ho-2'], models: [{ name: 'up-429', alias: 'ho-429' }] },
    { name: 'one', baseUrl: `${mock.url}/v1`, keys: ['one-1'], models: [{ name: 'up-500', alias: 'ho-500' }, { name: 'up-500s', alias: 'ho-500s' }] },
    { name: 'dead', baseUrl: `http://127.0.0.1:${deadPort}/v1`, keys: ['dead-1'], models: [{ name: 'up-dead', alias: 'ho-dead' }] },
    { name: 'cu', baseUrl: `${edge.url}/v1`, keys: ['cu-1'],
      models: [{ name: 'up-sse-err', alias: 'ho-sse' }, { name: 'up-chunked', alias: 'edge-chunked' }, { name: 'up-big', alias: 'edge-big' },
        { name: 'up-trunc-small', alias: 'edge-trunc-small' }, { name: 'up-trunc-big', alias: 'edge-trunc-big' },
        { name: 'up-drip', alias: 'edge-drip' }, { name: 'up-sse-err-split', alias: 'ho-sse-split' },
        { name: 'up-split', alias: 'edge-split' }, { name: 'up-close', alias: 'edge-close' }] },
    { name: 'rw', baseUrl: `${rawSrv.url}/v1`, keys: ['rw-1'], models: [{ name: 'up-eof', alias: 'raw-eof' }, { name: 'up-100', alias: 'raw-100' }] },
    { name: 'pl', baseUrl: `${poolSrv.url}/v1`, keys: ['pl-1'], models: [{ name: 'up-pool', alias: 'pool-m' }] },
    { name: 'ka', baseUrl: `${kaSrv.url}/v1`, keys: ['ka-1'], models: [{ name: 'up-ka', alias: 'ka-m' }] },
    { name: 'rs', baseUrl: `${rsSrv.url}/v1`, keys: ['rs-1'], models: [{ name: 'up-rs', alias: 'rs-m' }] },
  ];
}

before(async () => {
  mock = await startMock();
  mock.reply((req) => {
    const s = routes[req.model];
    return (typeof s === 'function' ? s(req) : s) ?? { text: `default for ${req.model}` };
  });
  edge = await startServer(edgeHandler);
  poolSrv = await startServer(simpleHandler);
  kaSrv = await startServer(simpleHandler, { idleCloseMs: 100 });
  // Closes a connection, without an answer, when a second request arrives on
  // it: what a server does when its keep-alive timer fires just as the proxy
  // reuses the connection.
  rsSrv = await startServer(async (req, res, rec) => {
    if (rec.nOnConn > 1) { rec.dropped = true; req.socket.destroy(); return; }
    return simpleHandler(req, res, rec);
  });
  rawSrv = await startRawServer();
  deadPort = await freePort(); // nothing listens there
  proxy = await startProxy({ apiKeys: [CLIENT_KEY], openaiCompat: openaiCompat(), extra: { workers: 1 } });
});

after(async () => {
  stopDrip = true;
  await proxy?.stop();
  await mock?.close();
  for (const s of [edge, poolSrv, kaSrv, rsSrv, rawSrv]) await s?.close();
});

// --------------------------------------------------------- 1. served in C

// Bodies with "model" in the middle, odd spacing, a nested "model" that must
// stay, escapes and multi-byte UTF-8.
function clientBody(stream, { big = false } = {}) {
  let content = 'Say hello — ünïcödé ✓ "q" \\ \t end';
  if (big) {
    const lines = [];
    for (let i = 0, n = 0; n < 77 * 1024; i++) {
      const l = `line ${i}: the quick brown fox — ünïcödé ✓ "q" \\ \n`;
      lines.push(l);
      n += Buffer.byteLength(JSON.stringify(l)) - 2;
    }
    content = lines.join('');
  }
  return `{"messages":[{"role":"system","content":"terse"},{"role":"user","content":${JSON.stringify(content)}}],` +
    `"temperature":0.5,  "model" :  "fp-model" , "metadata":{"model":"inner-keep","n":[1,2,{"model":"x"}]},` +
    `"stream" : ${stream ? 'true' : 'false'}, "max_tokens":7}`;
}
const upstreamBody = (b) => b.replace('"fp-model"', '"up-model"');

function assertUpstreamRequest(rec, sent, stream) {
  const expected = upstreamBody(sent);
  assert.equal(rec.method, 'POST');
  assert.equal(rec.url, '/v1/chat/completions');
  assert.ok(rec.rawBody === expected, `upstream body differs from the client's with only "model" changed (got ${rec.rawBody.length} chars, expected ${expected.length}); first difference at ${[...expected].findIndex((ch, i) => rec.rawBody[i] !== ch)}`);
  const names = [];
  for (let i = 0; i < rec.rawHeaders.length; i += 2) names.push(rec.rawHeaders[i].toLowerCase());
  const want = ['accept', 'authorization', 'content-length', 'content-type', 'host', 'user-agent', 'x-entry'];
  if (stream) want.push('cache-control');
  assert.deepEqual([...names].sort(), want.sort(), `upstream header names: ${rec.rawHeaders.join(' | ')}`);
  const h = rec.headers;
  assert.equal(h.host, `127.0.0.1:${mock.port}`);
  assert.equal(h['content-length'], String(Buffer.byteLength(expected)));
  assert.equal(h.authorization, 'Bearer up-key-1');
  assert.equal(h['content-type'], 'application/json');
  assert.equal(h['user-agent'], 'cli-proxy-openai-compat');
  assert.equal(h.accept, stream ? 'text/event-stream' : 'application/json');
  assert.equal(h['x-entry'], 'fp-entry');
  for (const [k, v] of Object.entries(h)) assert.ok(!String(v).includes(CLIENT_KEY), `client key leaked upstream in ${k}`);
}

test('startup: every plain-http openai-compatibility model is served in C', T(), async () => {
  const m = proxy.stderr().match(/fast path: (\d+) model\(s\) served in C/);
  assert.ok(m, `no "fast path: N model(s) served in C" line in:\n${proxy.stderr()}`);
  assert.equal(Number(m[1]), MODELS.length);
  assert.doesNotMatch(proxy.stderr(), /fast path off/);
});

for (const big of [false, true]) {
  test(`non-stream${big ? ' (~78 KB body)' : ''}: served fast, only "model" rewritten, upstream bytes relayed`, T(), async () => {
    routes['up-model'] = { raw: { status: 200, headers: { 'content-type': RAW_CT }, body: RAW_JSON } };
    const body = clientBody(false, { big });
    if (big) assert.ok(Buffer.byteLength(body) > 76 * 1024 && Buffer.byteLength(body) < 84 * 1024, `body is ${Buffer.byteLength(body)} bytes`);
    const n0 = mock.requests.length;
    const { res: r, line } = await logged(proxy, () => post(proxy, body, { headers: { 'x-client-junk': 'nope' } }));
    assert.equal(r.status, 200, r.text);
    assert.ok(isFast(line), `not served by the fast path: ${line}`);
    assert.equal(r.text, RAW_JSON, 'the client gets the upstream body byte for byte');
    assert.equal(r.headers.get('content-type'), RAW_CT, 'Content-Type comes from the upstream');
    assert.equal(mock.requests.length, n0 + 1);
    assertUpstreamRequest(mock.last(), body, false);
  });

  test(`stream${big ? ' (~78 KB body)' : ''}: served fast, exact SSE text relayed`, T(), async () => {
    routes['up-model'] = { raw: { status: 200, headers: { 'content-type': 'text/event-stream' }, body: RAW_SSE } };
    const body = clientBody(true, { big });
    const n0 = mock.requests.length;
    const { res: r, line } = await logged(proxy, () => post(proxy, body));
    assert.equal(r.status, 200, r.text);
    assert.ok(isFast(line), `not served by the fast path: ${line}`);
    assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
    assert.equal(r.text, RAW_SSE, 'the client gets the exact SSE text');
    assert.ok(r.text.endsWith('data: [DONE]\n\n'));
    assert.equal(mock.requests.length, n0 + 1);
    assertUpstreamRequest(mock.last(), body, true);
  });
}

test('stream: events are relayed as they arrive, not held until the end', T(), async () => {
  routes['up-model'] = { text: 'one two three four five six', chunks: 6, eventDelayMs: 80 };
  let firstAt = null;
  let text = '';
  const { line } = await logged(proxy, async () => {
    const r = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
      body: chatBody('fp-model', { stream: true }),
    });
    assert.equal(r.status, 200);
    for await (const ch of r.body) { firstAt ??= performance.now(); text += Buffer.from(ch).toString('utf8'); }
  });
  const rec = mock.last();
  assert.ok(rec.finishedAt != null, 'the upstream finished');
  assert.ok(firstAt < rec.finishedAt - 200, `first bytes reached the client only ${(rec.finishedAt - firstAt).toFixed(0)} ms before the upstream finished`);
  const got = text.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)).choices[0]?.delta?.content ?? '').join('');
  assert.equal(got, 'one two three four five six');
  assert.ok(text.endsWith('data: [DONE]\n\n'));
  assert.ok(isFast(line), `not served by the fast path: ${line}`);
});

// ------------------------------------------------------ 2. fast-path: false

const HOP = new Set(['date', 'content-length', 'transfer-encoding', 'connection', 'keep-alive']);
const head = (res) => [...res.headers].filter(([k]) => !HOP.has(k)).sort(([a], [b]) => (a < b ? -1 : 1));

test('fast-path: false gives the same status and body, without " | fast"', T(20000), async () => {
  const p0 = await startProxy({ apiKeys: [CLIENT_KEY], openaiCompat: openaiCompat(), extra: { workers: 1, 'fast-path': false } });
  try {
    assert.match(p0.stderr(), /fast path off/);
    assert.doesNotMatch(p0.stderr(), /fast path: \d+ model/);
    const cases = [
      ['non-stream', false, false, { raw: { status: 200, headers: { 'content-type': RAW_CT }, body: RAW_JSON } }],
      ['non-stream 78 KB', false, true, { raw: { status: 200, headers: { 'content-type': RAW_CT }, body: RAW_JSON } }],
      ['stream', true, false, { raw: { status: 200, headers: { 'content-type': 'text/event-stream' }, body: RAW_SSE } }],
      ['stream 78 KB', true, true, { raw: { status: 200, headers: { 'content-type': 'text/event-stream' }, body: RAW_SSE } }],
    ];
    for (const [what, stream, big, spec] of cases) {
      routes['up-model'] = spec;
      const body = clientBody(stream, { big });
      const fast = await logged(proxy, () => post(proxy, body));
      const slow = await logged(p0, () => post(p0, body));
      assert.ok(isFast(fast.line), `${what}: fast proxy line ${fast.line}`);
      assert.ok(!isFast(slow.line), `${what}: fast-path false still served fast: ${slow.line}`);
      assert.equal(slow.res.status, fast.res.status, `${what}: status`);
      assert.equal(slow.res.text, fast.res.text, `${what}: body`);
      assert.equal(fast.res.text, stream ? RAW_SSE : RAW_JSON, `${what}: body is the upstream's`);
      // One list of CORS and SSE headers (C's, which rt.http reads): both
      // paths send the same head.
      assert.deepEqual(head(slow.res), head(fast.res), `${what}: headers`);
      assert.equal(fast.res.headers.get('access-control-allow-origin'), '*', `${what}: CORS`);
      if (stream) assert.equal(fast.res.headers.get('x-accel-buffering'), 'no', `${what}: no proxy buffering`);
    }
  } finally {
    await p0.stop();
  }
});

// ------------------------------------------------------------ 3. eligibility

for (const [what, extra, why] of [
  ['a middleware (request_id)', { lua: { middleware: [{ name: 'request_id' }] } }, /fast path off: .*middleware/],
  ['routing.session-affinity', { routing: { 'session-affinity': true } }, /fast path off: .*affinity/],
]) {
  test(`${what}: fast path off at start, requests still served by Lua`, T(), async () => {
    const m2 = await startMock();
    m2.reply({ raw: { status: 200, headers: { 'content-type': 'application/json' }, body: RAW_JSON } });
    const p = await startProxy({
      apiKeys: [CLIENT_KEY], extra: { workers: 1, ...extra },
      openaiCompat: [{ name: 'e', baseUrl: `${m2.url}/v1`, keys: ['e-1'], models: [{ name: 'up-e', alias: 'e-model' }] }],
    });
    try {
      assert.match(p.stderr(), why);
      assert.doesNotMatch(p.stderr(), /fast path: \d+ model/);
      const { res: r, line } = await logged(p, () => post(p, chatBody('e-model')));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.text, RAW_JSON);
      assert.ok(!isFast(line), `served fast although ${what} is configured: ${line}`);
      assert.equal(m2.last().body.model, 'up-e');
      if (extra.lua) assert.ok(m2.last().headers['x-request-id'], 'the middleware ran (X-Request-Id sent upstream)');
    } finally {
      await p.stop();
      await m2.close();
    }
  });
}

test('a thinking suffix goes to Lua', T(), async () => {
  routes['up-model'] = { text: 'thought' };
  const n0 = mock.requests.length;
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('fp-model(high)')));
  assert.equal(r.status, 200, r.text);
  assert.ok(!isFast(line), `fp-model(high) was served fast: ${line}`);
  assert.equal(mock.requests.length, n0 + 1);
  assert.ok(!/\(high\)/.test(mock.last().rawBody.match(/"model"\s*:\s*"[^"]*"/)?.[0] ?? ''),
    `the suffix must not reach the upstream as part of the model: ${mock.last().rawBody}`);
});

for (const [what, body] of [
  ['truncated JSON', '{"model":"fp-model","messages":[{"role":"user","content":"x"}'],
  ['garbage after model and stream', '{"model":"fp-model","stream":false,"messages":[}]}'],
  ['trailing bytes', '{"model":"fp-model","messages":[]} xyz'],
]) {
  test(`malformed body (${what}): 400 in OpenAI's envelope from Lua`, T(), async () => {
    const n0 = mock.requests.length;
    const { res: r, line } = await logged(proxy, () => post(proxy, body));
    assert.equal(r.status, 400, r.text);
    assertOpenAIError(r.json, what);
    assert.ok(!isFast(line), `served fast: ${line}`);
    assert.equal(mock.requests.length, n0, 'nothing was sent upstream');
  });
}

test('client api-keys: right key served fast, wrong or missing key 401 in OpenAI envelope', T(), async () => {
  routes['up-model'] = { raw: { status: 200, headers: { 'content-type': 'application/json' }, body: RAW_JSON } };
  const n0 = mock.requests.length;
  const ok = await logged(proxy, () => post(proxy, chatBody('fp-model')));
  assert.equal(ok.res.status, 200);
  assert.ok(isFast(ok.line), ok.line);
  const ok2 = await logged(proxy, () => post(proxy, chatBody('fp-model'), { key: null, headers: { 'x-api-key': CLIENT_KEY } }));
  assert.equal(ok2.res.status, 200, 'the key in x-api-key is accepted too');
  for (const [what, opts] of [
    ['wrong key', { key: 'sk-wrong' }],
    ['key prefix', { key: CLIENT_KEY.slice(0, -1) }],
    ['key plus a byte', { key: `${CLIENT_KEY}x` }],
    ['no key', { key: null }],
  ]) {
    const bad = await logged(proxy, () => post(proxy, chatBody('fp-model'), opts));
    assert.equal(bad.res.status, 401, `${what}: ${bad.res.text}`);
    assertOpenAIError(bad.res.json, what);
    assert.ok(!isFast(bad.line), `${what}: ${bad.line}`);
  }
  assert.equal(mock.requests.length, n0 + 2, 'only the two accepted requests reached the upstream');
});

// --------------------------------------------------------------- 4. hand-off

test('429 with Retry-After on the first account: retried on the second, the first cools down', T(), async () => {
  routes['up-429'] = (req) => {
    const key = keyOf(req);
    state.first429 ??= key;
    if (key === state.first429) return { error: { status: 429, message: 'slow down', headers: { 'retry-after': '30' } } };
    return { raw: { status: 200, headers: { 'content-type': 'application/json' }, body: `{"served_by":"${key}"}` } };
  };
  const reqs = () => mock.requests.filter((q) => q.model === 'up-429').map(keyOf);
  const { res: r } = await logged(proxy, () => post(proxy, chatBody('ho-429')));
  assert.equal(r.status, 200, r.text);
  const first = state.first429;
  const other = first === 'ho-1' ? 'ho-2' : 'ho-1';
  assert.equal(r.text, `{"served_by":"${other}"}`);
  assert.deepEqual(reqs(), [first, other]);
  for (let i = 0; i < 3; i++) {
    const x = await logged(proxy, () => post(proxy, chatBody('ho-429')));
    assert.equal(x.res.status, 200, x.res.text);
    assert.equal(x.res.text, `{"served_by":"${other}"}`);
    assert.ok(isFast(x.line), `the request to the healthy account is served fast: ${x.line}`);
  }
  assert.deepEqual(reqs(), [first, other, other, other, other], 'the cooling account is not tried');
  const { res: s } = await logged(proxy, () => post(proxy, chatBody('ho-429', { stream: true })));
  assert.equal(s.status, 200, s.text);
  assert.deepEqual(reqs().slice(5), [other]);
});

test('single account, request-retry 0, upstream 500 with OpenAI error JSON: 500 and that JSON', T(), async () => {
  const errJson = '{"error":{"message":"kaputt upstream","type":"server_error","param":null,"code":"internal_error"}}';
  routes['up-500'] = { raw: { status: 500, headers: { 'content-type': 'application/json' }, body: errJson } };
  const n0 = mock.requests.length;
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ho-500')));
  assert.equal(r.status, 500, r.text);
  assert.equal(r.text, errJson);
  assert.ok(!isFast(line), line);
  assert.equal(mock.requests.length, n0 + 1, 'one attempt only');
  assert.equal(mock.last().body.model, 'up-500');
});

test('single account, request-retry 0, stream request answered 500: 500 and that JSON', T(), async () => {
  const errJson = '{"error":{"message":"stream kaputt","type":"server_error","param":null,"code":"internal_error"}}';
  routes['up-500s'] = { raw: { status: 500, headers: { 'content-type': 'application/json' }, body: errJson } };
  const n0 = mock.requests.length;
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ho-500s', { stream: true })));
  assert.equal(r.status, 500, r.text);
  assert.equal(r.text, errJson);
  assert.doesNotMatch(r.headers.get('content-type') || '', /event-stream/);
  assert.ok(!isFast(line), line);
  assert.equal(mock.requests.length, n0 + 1, 'one attempt only');
});

test('stream whose first event is an error: handed off, the client gets an error status with the message', T(), async () => {
  const n0 = edge.requests.length;
  const t0 = performance.now();
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ho-sse', { stream: true })));
  const took = performance.now() - t0;
  assert.ok(r.status >= 400, `status ${r.status} (body ${JSON.stringify(r.text)})`);
  assert.doesNotMatch(r.headers.get('content-type') || '', /event-stream/);
  assert.equal(r.json?.error?.message, 'boom', r.text);
  assert.ok(!isFast(line), line);
  assert.equal(edge.requests.length, n0 + 1, 'one attempt only');
  assert.ok(took < 1500, `the answer took ${took.toFixed(0)} ms: the error event must be judged when it arrives, not at the end of the stream`);
});

test('stream whose first error event arrives in pieces: still handed off', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ho-sse-split', { stream: true })));
  assert.ok(r.status >= 400, `status ${r.status} (body ${JSON.stringify(r.text)})`);
  assert.equal(r.json?.error?.message, 'split boom', r.text);
  assert.ok(!isFast(line), line);
});

test('connection refused: 502 in OpenAI envelope', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ho-dead')));
  assert.equal(r.status, 502, r.text);
  assertOpenAIError(r.json, 'connection refused');
  assert.ok(!isFast(line), line);
});

// ---------------------------------------------------- 5. connection pooling

test('20 sequential requests (non-stream and stream) use one upstream connection', T(), async () => {
  for (let i = 0; i < 20; i++) {
    const stream = i % 2 === 1;
    const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('pool-m', { stream })));
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.ok(isFast(line), `request ${i}: ${line}`);
    if (stream) assert.ok(r.text.endsWith('data: [DONE]\n\n'), r.text);
    else assert.equal(r.json?.choices?.[0]?.message?.content, 'ok');
  }
  assert.equal(poolSrv.requests.length, 20);
  assert.equal(poolSrv.conns.length, 1, `upstream saw ${poolSrv.conns.length} TCP connections`);
  assert.equal(poolSrv.requests.at(-1).nOnConn, 20);
});

test('concurrent requests: each gets its own answer, extra connections are opened and pooled', T(), async () => {
  const n0 = poolSrv.requests.length;
  const { res: rs, lines } = await logged(proxy, () => Promise.all(Array.from({ length: 12 }, (_, i) =>
    post(proxy, chatBody('pool-m', { metadata: { tag: `t${i}`, delayMs: 30 + (i % 4) * 20 } })))), 12);
  rs.forEach((r, i) => {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json?.echo, `t${i}`, `request ${i} got another request's answer: ${r.text}`);
  });
  assert.ok(lines.every(isFast), lines.join('\n'));
  const conns = new Set(poolSrv.requests.slice(n0).map((q) => q.conn.id));
  assert.ok(conns.size > 1, 'concurrent requests need more than one upstream connection');
  // Afterwards the pooled connections are reused: no new connection.
  const before = poolSrv.conns.length;
  const seq = await logged(proxy, async () => {
    for (let i = 0; i < 5; i++) assert.equal((await post(proxy, chatBody('pool-m'))).status, 200);
  }, 5);
  assert.ok(seq.lines.every(isFast), seq.lines.join('\n'));
  assert.equal(poolSrv.conns.length, before, 'sequential requests after the burst reuse pooled connections');
});

test('pipelined client requests are answered in order', T(), async () => {
  const c = await connect(proxy.port);
  await logged(proxy, async () => { try {
    c.write(chatRequest({ key: CLIENT_KEY, body: chatBody('pool-m', { metadata: { tag: 'p1', delayMs: 150 } }) }) +
      chatRequest({ key: CLIENT_KEY, body: chatBody('pool-m', { metadata: { tag: 'p2' } }) }));
    const a = await c.next({ timeoutMs: 5000 });
    const b = await c.next({ timeoutMs: 5000 });
    assert.equal(a.status, 200, a.text ?? a.raw);
    assert.equal(b.status, 200, b.text ?? b.raw);
    assert.equal(JSON.parse(a.text).echo, 'p1');
    assert.equal(JSON.parse(b.text).echo, 'p2');
  } finally {
    c.close();
  } }, 2);
});

test('client leaving while the upstream has not answered: upstream closed, the next request gets its own answer', T(), async () => {
  const n0 = poolSrv.requests.length;
  const ac = new AbortController();
  const p = fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
    body: chatBody('pool-m', { metadata: { tag: 'stale', delayMs: 600 } }), signal: ac.signal,
  }).catch((e) => e);
  const end = Date.now() + 3000;
  while (poolSrv.requests.length <= n0 && Date.now() < end) await sleep(5);
  const rec = poolSrv.requests[n0];
  assert.ok(rec, 'the request reached the upstream');
  const t0 = performance.now();
  const { line } = await logged(proxy, async () => {
    ac.abort();
    await p;
  });
  assert.ok(isFast(line) && /client closed/.test(line), line);
  while (rec.closedAt == null && performance.now() - t0 < 2000) await sleep(10);
  assert.ok(rec.closedAt != null && rec.closedAt - t0 < 2000, 'the upstream connection is closed within 2 s of the client leaving');
  const { res: r } = await logged(proxy, () => post(proxy, chatBody('pool-m', { metadata: { tag: 'fresh' } })));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json?.echo, 'fresh', `got ${r.text}`);
  await sleep(700); // the stale answer would have come by now
  const { res: r2, line: l2 } = await logged(proxy, () => post(proxy, chatBody('pool-m', { metadata: { tag: 'fresh2' } })));
  assert.equal(r2.json?.echo, 'fresh2', `got ${r2.text}`);
  assert.ok(isFast(l2), l2);
});

test('upstream closing idle keep-alive connections after 100 ms: every request still succeeds', T(), async () => {
  for (let i = 0; i < 5; i++) {
    if (i) await sleep(300);
    const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('ka-m', { stream: i % 2 === 1 })));
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.ok(isFast(line), `request ${i}: ${line}`);
  }
  assert.equal(kaSrv.requests.length, 5);
  assert.ok(kaSrv.conns.length >= 2, `test setup: the server should have closed idle connections (saw ${kaSrv.conns.length})`);
});

test('a reused connection that the upstream drops without an answer: re-sent on a fresh one', T(), async () => {
  for (let i = 0; i < 4; i++) {
    const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('rs-m')));
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.ok(isFast(line), `request ${i} was not completed by the fast path: ${line}`);
  }
  const dropped = rsSrv.requests.filter((q) => q.dropped).length;
  const answered = rsSrv.requests.filter((q) => !q.dropped).length;
  assert.equal(answered, 4);
  assert.equal(dropped, 3, `test setup: requests 2..4 should first have been sent on the reused connection (dropped ${dropped})`);
  assert.equal(rsSrv.conns.length, 4);
});

// --------------------------------------------------------- 6. edge answers

test('stream whose ~150 KB first event arrives in small pieces: relayed byte for byte', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('edge-split', { stream: true })));
  assert.equal(r.status, 200);
  assert.ok(isFast(line), line);
  assert.equal(r.buf.length, SPLIT_SSE.length);
  assert.ok(r.buf.equals(SPLIT_SSE), 'stream differs');
});

test('upstream answering with Connection: close: not reused, every request served', T(), async () => {
  const n0 = edge.requests.length;
  for (let i = 0; i < 3; i++) {
    const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('edge-close')));
    assert.equal(r.status, 200, r.text);
    assert.ok(isFast(line), line);
  }
  const conns = edge.requests.slice(n0).map((q) => q.conn.id);
  assert.equal(new Set(conns).size, 3, `each request on its own connection: ${conns}`);
});

test('upstream body delimited by the connection close: relayed whole', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('raw-eof')));
  assert.equal(r.status, 200, r.text.slice(0, 300));
  assert.ok(isFast(line), line);
  assert.equal(r.buf.length, EOF_BODY.length);
  assert.ok(r.buf.equals(EOF_BODY), 'body differs');
});

test('upstream sending 100 Continue before its answer: the answer is relayed', T(), async () => {
  for (let i = 0; i < 2; i++) {
    const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('raw-100')));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json?.id, 'after-100', r.text);
    assert.ok(isFast(line), line);
  }
});

test('upstream non-stream answer with Transfer-Encoding: chunked: relayed whole', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('edge-chunked')));
  assert.equal(r.status, 200);
  assert.ok(isFast(line), line);
  assert.equal(r.buf.length, CHUNKED_BODY.length);
  assert.ok(r.buf.equals(CHUNKED_BODY), 'body differs');
});

test('upstream non-stream answer of 2 MiB with Content-Length: relayed whole', T(), async () => {
  const { res: r, line } = await logged(proxy, () => post(proxy, chatBody('edge-big')));
  assert.equal(r.status, 200);
  assert.ok(isFast(line), line);
  assert.equal(r.buf.length, BIG_BODY.length);
  assert.ok(r.buf.equals(BIG_BODY), 'body differs');
  assert.equal(r.headers.get('content-type'), 'application/json');
});

for (const [model, size] of [['edge-trunc-small', 20000], ['edge-trunc-big', BIG_BODY.length]]) {
  test(`upstream closes halfway through a ${size}-byte Content-Length body: no complete-looking 200`, T(), async () => {
    const { res: r, line } = await logged(proxy, async () => {
      const c = await connect(proxy.port);
      try {
        c.write(chatRequest({ key: CLIENT_KEY, body: chatBody(model) }));
        return await c.next({ timeoutMs: 8000 });
      } finally {
        c.close();
      }
    });
    assert.ok(isFast(line), line);
    if (!r.closed) {
      // (closed = the connection ended before a complete response: the client can tell.)
      assert.notEqual(r.status, 200, `a complete-looking 200 with ${r.body.length} body bytes (upstream sent ${size >> 1} of ${size})`);
      assertOpenAIError(JSON.parse(r.text), 'truncated upstream body');
    }
    assert.equal((await healthz(proxy.url)).status, 200);
  });
}

test('client disconnect mid-stream: the upstream connection is closed within 2 s', T(), async () => {
  const n0 = edge.requests.length;
  const { line } = await logged(proxy, async () => {
    const c = await connect(proxy.port);
    c.write(chatRequest({ key: CLIENT_KEY, body: chatBody('edge-drip', { stream: true }) }));
    const end = Date.now() + 5000;
    while (!c.buf.toString('latin1').includes('tick 2 ') && Date.now() < end) await sleep(5);
    assert.match(c.buf.toString('latin1'), /tick 2 /, 'the stream reached the client');
    const rec = edge.requests[n0];
    assert.ok(rec && rec.model === 'up-drip');
    assert.equal(rec.closedAt, null);
    const t0 = performance.now();
    c.close();
    const until = performance.now() + 2000;
    while (rec.closedAt == null && performance.now() < until) await sleep(10);
    assert.ok(rec.closedAt != null, 'the upstream connection is still open 2 s after the client left');
    assert.ok(rec.closedAt - t0 < 2000, `closed ${(rec.closedAt - t0).toFixed(0)} ms after the client left`);
    assert.equal(rec.finished, false, 'the upstream response was cut, not completed');
  });
  assert.ok(isFast(line), line);
});

// ----------------------------------------------------------- 7. slow client

test('slow client that stops reading a large stream: upstream paused, proxy RSS bounded', T(20000), async (t) => {
  routes['up-endless'] = { endless: { intervalMs: 1, bytes: 16384, burstBytes: 1 << 20, maxMs: 15000 } };
  const rss0 = proxy.rssKiB();
  const n0 = mock.requests.length;
  const nl = accessLines(proxy).length;
  const c = await connect(proxy.port);
  c.sock.pause(); // never read: only the kernel buffers fill
  c.write(chatRequest({ key: CLIENT_KEY, body: chatBody('fp-endless', { stream: true }) }));
  const rec = await mock.waitForRequest((q) => q.n >= n0 && q.model === 'up-endless', 5000);
  const start = performance.now();
  let peak = rss0;
  let prev = 0;
  let stalledSince = null;
  while (performance.now() - start < 8000) {
    await sleep(200);
    peak = Math.max(peak, proxy.rssKiB() ?? 0);
    if (rec.bytesOut - prev < 256 * 1024) stalledSince ??= performance.now(); else stalledSince = null;
    prev = rec.bytesOut;
    if (performance.now() - start > 2000 && stalledSince && performance.now() - stalledSince > 1500) break;
    if (rec.bytesOut > 256 * 1048576 || peak - rss0 > 128 * 1024) { stalledSince = null; break; } // clearly unbounded
  }
  const growthMiB = (peak - rss0) / 1024;
  const mib = rec.bytesOut / 1048576;
  t.diagnostic(`upstream wrote ${mib.toFixed(1)} MiB (${stalledSince ? 'then stalled' : 'never stalled'}); proxy RSS ${rss0} KiB -> peak ${peak} KiB (+${growthMiB.toFixed(1)} MiB)`);
  try {
    assert.ok(stalledSince, `the upstream never stalled: it wrote ${mib.toFixed(1)} MiB (no backpressure)`);
    assert.ok(growthMiB < 30, `proxy RSS grew by ${growthMiB.toFixed(1)} MiB`);
    assert.ok(mib < 64, `${mib.toFixed(1)} MiB in flight is not a bounded buffer`);
    assert.ok(rec.abortedAt == null && rec.closedAt == null, 'the upstream stays open while the client is merely slow');
  } finally {
    const t0 = performance.now();
    c.close();
    await mock.waitForClose(rec, 2000).catch(() => {});
    const closed = rec.abortedAt ?? rec.closedAt;
    assert.ok(closed != null && closed - t0 < 2000, 'after the slow client left, the upstream is closed within 2 s');
  }
  const end = Date.now() + 2000;
  while (accessLines(proxy).length <= nl && Date.now() < end) await sleep(10);
  const line = accessLines(proxy).slice(nl)[0] || '';
  assert.ok(isFast(line), `the slow stream was not served by the fast path: ${line}`);
  assert.equal((await healthz(proxy.url)).status, 200);
});

// ------------------------------------------------------------------ the end

test('the proxy shuts down cleanly after all of the above', T(), async () => {
  await sleep(100);
  const r = await proxy.stop();
  assert.deepEqual([r.code, r.signal, !!r.killed], [0, null, false], `exit: ${JSON.stringify(r)}\n${proxy.stderr().slice(-3000)}`);
  assert.doesNotMatch(proxy.stderr(), /AddressSanitizer|LeakSanitizer|runtime error:|stack traceback/, proxy.stderr().slice(-3000));
});
