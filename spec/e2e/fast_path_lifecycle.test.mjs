// The C fast path across changes of its route table: a stream served in C
// keeps going (and ends byte-exact) while the table it was sent from is
// replaced, because credential files changed (rt.lane rebuilds the table on
// the same generation) or the config was reloaded (a new generation). Also
// `workers: 2`, each worker with its own table and connection pool.
// Under CPX_BIN=build-asan/cliproxy a table freed too early is a report.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startProxy, BIN, SCRATCH } from './lib/proxy.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 20000) => ({ timeout: ms });

// An upstream whose streams send one event, then wait for release() before
// the rest, so a request can be held in flight on purpose.
let up, upUrl;
const gates = [];
function release() { while (gates.length) gates.shift()(); }
const FRAMES = (n) => Array.from({ length: n }, (_, i) =>
  `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"part-${i}"}}]}\n\n`);

before(async () => {
  up = http.createServer({ keepAliveTimeout: 60000 }, async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const j = JSON.parse(body);
    if (!j.stream) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'x', object: 'chat.completion', model: j.model,
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }] }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const frames = FRAMES(20);
    res.write(frames[0]);
    await new Promise((r) => gates.push(r));
    for (const f of frames.slice(1)) res.write(f);
    res.end('data: [DONE]\n\n');
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  upUrl = `http://127.0.0.1:${up.address().port}/v1`;
});

after(async () => {
  release();
  up.closeAllConnections?.();
  await new Promise((r) => up.close(r));
});

const compat = () => [{ name: 'lc', baseUrl: upUrl, keys: ['lc-key'], models: [{ name: 'up-lc', alias: 'lc-model' }] }];

function accessLines(p) {
  return p.stderr().split('\n').filter((l) => /\| POST \/v1\/chat\/completions \|/.test(l));
}

async function waitFor(fn, ms = 5000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (fn()) return true;
    await sleep(20);
  }
  return fn();
}

// Starts a stream and resolves once its first event arrived; .rest() reads
// the remainder.
async function openStream(p) {
  const res = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'lc-model', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  while (!text.includes('part-0')) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  return {
    first: text,
    async rest() {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        text += dec.decode(value, { stream: true });
      }
    },
  };
}

const expected = FRAMES(20).join('') + 'data: [DONE]\n\n';

async function plain(p) {
  const r = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'lc-model', messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: r.status, body: await r.json() };
}

test('a stream in flight survives the table being rebuilt after a credential file changed', T(), async () => {
  const p = await startProxy({ openaiCompat: compat() });
  try {
    const s = await openStream(p);
    // A credential file changes the store's version: the next request goes
    // to Lua, which rebuilds the fast path's table (the old one is still
    // referenced by the stream above).
    const authDir = path.join(p.dir, 'auths');
    fs.writeFileSync(path.join(authDir, 'claude-lc@example.com.json'),
      JSON.stringify({ type: 'claude', access_token: 'tok', email: 'lc@example.com' }), { mode: 0o600 });
    let n0 = accessLines(p).length;
    let lua = false;
    for (let i = 0; i < 100 && !lua; i++) {
      const r = await plain(p);
      assert.equal(r.status, 200);
      await waitFor(() => accessLines(p).length > n0, 3000);
      const line = accessLines(p).at(-1);
      n0 = accessLines(p).length;
      lua = !/\| fast/.test(line);
      if (!lua) await sleep(50);
    }
    assert.ok(lua, 'a request went through Lua after the store changed');
    // ...and the one after is fast again, from the new table.
    const before = accessLines(p).length;
    assert.equal((await plain(p)).status, 200);
    await waitFor(() => accessLines(p).length > before, 3000);
    assert.match(accessLines(p).at(-1), /\| fast/);
    release();
    const text = await s.rest();
    assert.equal(text, expected);
  } finally {
    release();
    const ex = await p.stop();
    assert.equal(ex.code, 0, p.stderr().slice(-2000));
    assert.doesNotMatch(p.stderr(), /AddressSanitizer|runtime error/);
  }
});

test('a stream in flight survives a config reload (SIGHUP) and new requests use the new generation', T(), async () => {
  const p = await startProxy({ openaiCompat: compat() });
  try {
    const s = await openStream(p);
    // Same upstream, a second alias: only the new generation knows it.
    const cfg = fs.readFileSync(p.configPath, 'utf8').replace('alias: "lc-model"', 'alias: "lc-model"\n      - name: "up-lc"\n        alias: "lc-two"');
    assert.notEqual(cfg, fs.readFileSync(p.configPath, 'utf8'));
    fs.writeFileSync(p.configPath, cfg);
    process.kill(p.pid, 'SIGHUP');
    assert.ok(await waitFor(() => /reloaded \(/.test(p.stderr()), 5000), p.stderr().slice(-1500));
    const r = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'lc-two', messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).model, 'up-lc');
    await waitFor(() => accessLines(p).length >= 2, 3000);
    assert.match(accessLines(p).at(-1), /\| fast/);
    release();
    assert.equal(await s.rest(), expected);
  } finally {
    release();
    const ex = await p.stop();
    assert.equal(ex.code, 0, p.stderr().slice(-2000));
    assert.doesNotMatch(p.stderr(), /AddressSanitizer|runtime error/);
  }
});

test('workers: 2 serve the fast path on both loops', T(), async () => {
  const p = await startProxy({ openaiCompat: compat(), extra: { workers: 2 } });
  try {
    assert.match(p.stderr(), /fast path: 1 model\(s\) served in C/);
    const rs = await Promise.all(Array.from({ length: 40 }, () => plain(p)));
    for (const r of rs) {
      assert.equal(r.status, 200);
      assert.equal(r.body.model, 'up-lc');
    }
    await waitFor(() => accessLines(p).length >= 40, 3000);
    const lines = accessLines(p);
    assert.equal(lines.length, 40);
    assert.ok(lines.every((l) => /\| fast/.test(l)));
  } finally {
    const ex = await p.stop();
    assert.equal(ex.code, 0, p.stderr().slice(-2000));
  }
});

test('a second proxy on a taken port exits 1 naming the address, with nothing leaked', T(), async () => {
  const p = await startProxy({ openaiCompat: compat() });
  try {
    const r = spawnSync(BIN, ['--config', p.configPath], { cwd: SCRATCH, encoding: 'utf8', timeout: 15000 });
    // (Under the ASan binary a leak is reported on stderr.)
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /cannot listen on 127\.0\.0\.1:\d+: address already in use/);
    assert.doesNotMatch(r.stderr, /Sanitizer/);
  } finally {
    await p.stop();
  }
});

test('an 8 MiB request body reaches the upstream byte-exact (the socket takes it in pieces)', T(), async () => {
  const crypto = await import('node:crypto');
  const got = [];
  const srv = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    got.push({ length: body.length, sha: crypto.createHash('sha256').update(body).digest('hex'), cl: req.headers['content-length'] });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"id":"x","object":"chat.completion","choices":[]}');
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const p = await startProxy({ openaiCompat: [{ name: 'big', baseUrl: `http://127.0.0.1:${srv.address().port}/v1`,
    keys: ['k'], models: [{ name: 'up-big', alias: 'big-model' }] }] });
  try {
    const text = 'abcdefghij'.repeat(8 * 1024 * 1024 / 10);
    const tail = ', "model" : "big-model", "n": 1}';
    const body = `{"messages":[{"role":"user","content":"${text}"}]${tail}`;
    const want = body.replace('"big-model"', '"up-big"');
    const r = await fetch(`${p.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    assert.equal(r.status, 200);
    await r.text();
    assert.equal(got.length, 1);
    assert.equal(got[0].length, Buffer.byteLength(want));
    assert.equal(got[0].cl, String(Buffer.byteLength(want)));
    assert.equal(got[0].sha, crypto.createHash('sha256').update(want).digest('hex'));
    assert.ok(await waitFor(() => accessLines(p).some((l) => /\| fast/.test(l)), 3000), p.stderr().slice(-800));
  } finally {
    await p.stop();
    await new Promise((r) => srv.close(r));
  }
});
