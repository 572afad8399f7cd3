// https upstreams end to end: an openai-compatibility account on https:// is
// served by the C lane through cpx_h1's TLS client, trusting the local test
// CA named by upstream-ca-file; the same CA key applies to the libcurl path
// (fast-path: false). Certificates are made at run time (lib/tls.mjs).
//
//   good   https server with a certificate from the test CA
//   ka     the same, only for the keep-alive count (its own connections)
//   rogue  https server with a self-signed certificate (no CA vouches)
//   brief  the good certificate, closing idle connections after 100 ms
//
// Proxies: lane (fast path, CA key, request-retry 1), laneNoCa (fast path,
// no CA key), curl (fast-path false, CA key), curlNoCa (fast-path false, no
// CA key).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startProxy, buildConfig } from './lib/proxy.mjs';
import { makeCerts, startHttpsServer } from './lib/tls.mjs';
import { sleep, until } from './lib/wait.mjs';

const CLIENT_KEY = 'sk-client-tls-e2e';
const T = (ms = 20000) => ({ timeout: ms });

// A fixed answer with non-ASCII text and escapes: relayed byte for byte.
const FIXED = '{\n  "id": "chatcmpl-tls",\n  "object": "chat.completion",\n  "model": "up-ok",\n' +
  '  "choices": [{"index":0,"message":{"role":"assistant","content":"Grüße 🌍 \\"tls\\" \\u00e9"},"finish_reason":"stop"}]\n}\n';
const sse = (content, finish = null) =>
  `data: ${JSON.stringify({ id: 's', object: 'chat.completion.chunk', choices: [{ index: 0, delta: content == null ? {} : { content }, finish_reason: finish }] })}\n\n`;
const STREAM = [sse('Hel'), sse('lo'), sse(null, 'stop'), 'data: [DONE]\n\n'];

let certs, good, ka, rogue, brief, lane, laneNoCa, curl, curlNoCa;
const state = {};

async function handler(req, res, rec) {
  if (rec.model === 'up-500') {
    // The first account asked answers 500; the other one serves.
    state.first500 ??= rec.key;
    if (rec.key === state.first500) {
      const b = '{"error":{"message":"tls kaputt","type":"server_error","code":"internal_error"}}';
      res.writeHead(500, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
      res.end(b);
      return;
    }
    const b = `{"served_by":"${rec.key}"}`;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
    res.end(b);
    return;
  }
  if (rec.body?.stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (const piece of STREAM) {
      res.write(piece);
      await sleep(2);
    }
    res.end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(FIXED) });
  res.end(FIXED);
}

function accounts() {
  return [
    { name: 'good', baseUrl: `https://localhost:${good.port}/v1`, keys: ['k-good'], headers: { 'X-Entry': 'good' },
      models: [{ name: 'up-ok', alias: 'tls-ok' }] },
    { name: 'two', baseUrl: `https://127.0.0.1:${good.port}/v1`, keys: ['k-a', 'k-b'], models: [{ name: 'up-500', alias: 'tls-500' }] },
    { name: 'ka', baseUrl: `https://localhost:${ka.port}/v1`, keys: ['k-ka'], models: [{ name: 'up-ka', alias: 'tls-ka' }] },
    { name: 'brief', baseUrl: `https://localhost:${brief.port}/v1`, keys: ['k-brief'], models: [{ name: 'up-brief', alias: 'tls-brief' }] },
    { name: 'rogue', baseUrl: `https://localhost:${rogue.port}/v1`, keys: ['k-rogue'], models: [{ name: 'up-rogue', alias: 'tls-bad' }] },
  ];
}

const ACCESS = /\| POST \/v1\/chat\/completions \|/;
function accessLines(p) {
  const s = p.stderr();
  return s.slice(0, s.lastIndexOf('\n') + 1).split('\n').filter((l) => ACCESS.test(l));
}
const isFast = (line) => / \| fast( \| |$)/.test(line);

async function post(p, model, extra = {}) {
  const n0 = accessLines(p).length;
  const r = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...extra }),
    signal: AbortSignal.timeout(10000),
  });
  const text = Buffer.from(await r.arrayBuffer()).toString('utf8');
  let json = null;
  try { json = JSON.parse(text); } catch {}
  const end = Date.now() + 3000;
  while (accessLines(p).length <= n0 && Date.now() < end) await sleep(10);
  return { status: r.status, headers: r.headers, text, json, line: accessLines(p)[n0] || '' };
}

function assertEnvelope(r, re, where) {
  assert.ok(r.status >= 400, `${where}: status ${r.status}`);
  assert.equal(typeof r.json?.error?.message, 'string', `${where}: OpenAI error envelope, got ${r.text}`);
  assert.equal(typeof r.json.error.type, 'string', `${where}: error.type`);
  assert.match(r.json.error.message, re, `${where}: ${r.json.error.message}`);
}

before(async () => {
  certs = makeCerts();
  good = await startHttpsServer(certs.leaf, handler);
  ka = await startHttpsServer(certs.leaf, handler);
  rogue = await startHttpsServer(certs.rogue, handler);
  brief = await startHttpsServer(certs.leaf, handler, { keepAliveTimeout: 100 });
  const base = { apiKeys: [CLIENT_KEY], openaiCompat: accounts() };
  lane = await startProxy({ ...base, extra: { workers: 1, 'request-retry': 1, 'upstream-ca-file': certs.caFile } });
  laneNoCa = await startProxy({ ...base, extra: { workers: 1 } });
  curl = await startProxy({ ...base, extra: { workers: 1, 'fast-path': false, 'upstream-ca-file': certs.caFile } });
  curlNoCa = await startProxy({ ...base, extra: { workers: 1, 'fast-path': false } });
});

after(async () => {
  for (const p of [lane, laneNoCa, curl, curlNoCa]) await p?.stop();
  for (const s of [good, ka, rogue, brief]) await s?.close();
  certs?.remove();
});

test('the https models are served by the lane', T(), () => {
  assert.match(lane.stderr(), /fast path: \d+ model\(s\) served in C/);
});

test('chat through the lane over TLS: bytes unchanged, the request as the account says', T(), async () => {
  const n0 = good.requests.length;
  const r = await post(lane, 'tls-ok');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text, FIXED);
  assert.ok(isFast(r.line), r.line);
  const rec = good.requests[n0];
  assert.equal(rec.model, 'up-ok');
  assert.equal(rec.key, 'k-good');
  assert.equal(rec.headers['x-entry'], 'good');
  assert.equal(rec.headers.host, `localhost:${good.port}`);
});

test('a stream through the lane over TLS', T(), async () => {
  const r = await post(lane, 'tls-ok', { stream: true });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type') || '', /text\/event-stream/);
  assert.equal(r.text, STREAM.join(''));
  assert.ok(isFast(r.line), r.line);
});

test('keep-alive: many requests, one TLS connection at the upstream', T(), async () => {
  for (let i = 0; i < 12; i++) {
    const r = await post(lane, 'tls-ka', { stream: i % 3 === 0 });
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.ok(isFast(r.line), `request ${i}: ${r.line}`);
  }
  assert.equal(ka.requests.length, 12);
  assert.equal(ka.tlsConns, 1, `the upstream saw ${ka.tlsConns} TLS handshakes`);
  assert.deepEqual([...new Set(ka.requests.map((q) => q.conn))], [1]);
});

test('a new connection after the server closed the idle one resumes the TLS session', T(), async () => {
  for (let i = 0; i < 3; i++) {
    const r = await post(lane, 'tls-brief');
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.equal(r.text, FIXED);
    assert.ok(isFast(r.line), r.line);
    // the server drops the idle connection; the next request needs a new one
    await until(() => brief.sockets.size === 0, 'the upstream to close the idle connection');
  }
  assert.equal(brief.tlsConns, 3);
  assert.equal(brief.resumed, 2, 'the second and third handshakes resumed the session of the one before');
});

test('a 500 from the first account is handed to Lua and retried on the next one', T(), async () => {
  const reqs = () => good.requests.filter((q) => q.model === 'up-500').map((q) => q.key);
  const r = await post(lane, 'tls-500');
  assert.equal(r.status, 200, r.text);
  const first = state.first500;
  const other = first === 'k-a' ? 'k-b' : 'k-a';
  assert.equal(r.text, `{"served_by":"${other}"}`);
  assert.deepEqual(reqs(), [first, other]);
  assert.ok(!isFast(r.line), `the retried request ends in Lua: ${r.line}`);
});

test('a certificate no trusted CA signed is refused: error in the OpenAI envelope, nothing sent', T(), async () => {
  const r = await post(lane, 'tls-bad');
  assertEnvelope(r, /certificate verify failed/i, 'rogue upstream');
  assert.equal(r.status, 502);
  assert.equal(rogue.requests.length, 0, 'no request reached the rogue server');
  assert.equal(rogue.tlsConns, 0, 'no handshake completed');
  // What happens to the account next is the pool's decision, the same as
  // for the same failure through libcurl.
  const again = await post(lane, 'tls-bad');
  const c1 = await post(curl, 'tls-bad');
  assertEnvelope(c1, /certificate/i, 'rogue upstream via libcurl');
  const c2 = await post(curl, 'tls-bad');
  assert.equal(again.status, c2.status, `lane ${again.text} / libcurl ${c2.text}`);
  assert.equal(again.json?.error?.code, c2.json?.error?.code);
  assert.equal(rogue.requests.length, 0);
});

test('without upstream-ca-file the test CA is not trusted, by the lane or libcurl', T(), async () => {
  const n0 = good.requests.length;
  for (const p of [laneNoCa, curlNoCa]) {
    const r = await post(p, 'tls-ok');
    assertEnvelope(r, /certif/i, p === laneNoCa ? 'lane' : 'libcurl');
  }
  assert.equal(good.requests.length, n0, 'nothing was sent to the upstream');
});

test('libcurl (fast-path: false) trusts the same CA key: bytes unchanged, stream too', T(), async () => {
  const r = await post(curl, 'tls-ok');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text, FIXED);
  assert.ok(!isFast(r.line), r.line);
  const s = await post(curl, 'tls-ok', { stream: true });
  assert.equal(s.status, 200, s.text);
  assert.equal(s.text, STREAM.join(''));
});

test('an unreadable upstream-ca-file stops the start with the key named', T(), async () => {
  const missing = path.join(certs.dir, 'missing.pem');
  assert.equal(fs.existsSync(missing), false);
  await assert.rejects(
    startProxy({ apiKeys: [CLIENT_KEY], openaiCompat: [], extra: { 'upstream-ca-file': missing } }),
    (e) => /upstream-ca-file/.test(e.message) && e.message.includes(missing),
  );
});

test('reload: a bad upstream-ca-file is rejected and the old trust kept; a good one applies at once', T(30000), async () => {
  const opts = { apiKeys: [CLIENT_KEY], openaiCompat: accounts() };
  const p = await startProxy({ ...opts, extra: { workers: 1, 'request-retry': 0, 'disable-cooling': true } });
  try {
    const rewrite = (extra) => fs.writeFileSync(p.configPath, buildConfig({ ...opts, port: p.port,
      authDir: path.join(p.dir, 'auths'), extra: { workers: 1, 'request-retry': 0, 'disable-cooling': true, ...extra } }));
    const before = await post(p, 'tls-ok');
    assertEnvelope(before, /certificate verify failed/, 'before the key');

    const bad = path.join(certs.dir, 'not-a-ca.pem');
    fs.writeFileSync(bad, 'no certificate here\n');
    rewrite({ 'upstream-ca-file': bad });
    p.child.kill('SIGHUP');
    await until(() => /reload \(.*\) rejected.*upstream-ca-file/.test(p.stderr()), 'the reload to be rejected');
    const still = await post(p, 'tls-ok');
    assertEnvelope(still, /certificate verify failed/, 'after the rejected reload');

    const n0 = (p.stderr().match(/reloaded \(/g) || []).length;
    rewrite({ 'upstream-ca-file': certs.caFile });
    p.child.kill('SIGHUP');
    await until(() => (p.stderr().match(/reloaded \(/g) || []).length > n0, 'the reload');
    const after = await post(p, 'tls-ok');
    assert.equal(after.status, 200, after.text);
    assert.equal(after.text, FIXED);
    assert.ok(isFast(after.line), after.line);
  } finally {
    await p.stop();
  }
});
