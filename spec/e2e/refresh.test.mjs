// Issue 10: the refresh engine of OAuth accounts through the real binary,
// with a mock OAuth token server and a mock upstream on loopback
// (oauth-endpoints points both providers at them): a refresh ahead of
// expiry with the rotated tokens written back (0600), 20 concurrent
// requests on an expired token and one token call, two cliproxy processes
// on one auth-dir and one token call, 401 -> refresh -> retry,
// invalid_grant taking the account out of the pool (with its state),
// kill -9 during token writes leaving a valid file, and the backoff after
// a 500 from the token server.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, buildConfig } from './lib/proxy.mjs';
import { sleep, waitFor } from './lib/wait.mjs';

const MODEL = 'claude-sonnet-4-5-20250929';
const FILE = 'claude-user@example.com.json';


const rfc3339 = (s) => new Date(s * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
const nowS = () => Math.floor(Date.now() / 1000);

// The token server: rotates on every grant (rt-N -> rt-N+1); a refresh
// token presented twice is counted as a reuse (RFC 9700 would revoke).
async function startTokenServer() {
  const t = {
    calls: [], reused: 0, seq: 0, mode: 'ok', delayMs: 0, expiresIn: 28800, onAnswer: null, issued: new Set(['rt-0']),
    used: new Set(),
  };
  const srv = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString();
    let body = {};
    try { body = JSON.parse(raw); } catch { body = Object.fromEntries(new URLSearchParams(raw)); }
    t.calls.push({ body, headers: req.headers });
    if (t.used.has(body.refresh_token)) t.reused++;
    t.used.add(body.refresh_token);
    if (t.delayMs) await sleep(t.delayMs);
    let status = 200;
    let out;
    if (t.mode === '500') { status = 500; out = { error: 'server_error', error_description: 'token service down' }; }
    else if (t.mode === 'invalid_grant') { status = 400; out = { error: 'invalid_grant', error_description: 'refresh token revoked' }; }
    else {
      const n = ++t.seq;
      t.issued.add(`rt-${n}`);
      out = { access_token: `at-${n}`, refresh_token: `rt-${n}`, expires_in: t.expiresIn, token_type: 'Bearer',
              account: { email_address: 'user@example.com', uuid: 'acc-1' } };
    }
    const text = JSON.stringify(out);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
    if (t.onAnswer) t.onAnswer();
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.url = `http://127.0.0.1:${srv.address().port}`;
  t.close = () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(r); });
  return t;
}

function credential(expiresAt, extra = {}) {
  return JSON.stringify({
    id_token: '', access_token: 'at-0', refresh_token: 'rt-0', last_refresh: rfc3339(nowS() - 3600),
    email: 'user@example.com', type: 'claude', expired: rfc3339(expiresAt), note: 'keep me', ...extra,
  }, null, 2);
}

function writeCred(dir, text) {
  const tmp = path.join(dir, `.w-${process.pid}.tmp`);
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, path.join(dir, FILE));
}

const STATE_PROBE = `
local cpx = require("cpx")
return { name = "refresh_state", priority = 1, schema = {}, hooks = {
  access = function(conf, ctx)
    if ctx.info.headers["x-refresh-state"] then
      return 409, cpx.json.encode(require("rt.refresh").state())
    end
  end } }
`;

const luaDirs = [];
process.on('exit', () => { for (const d of luaDirs) fs.rmSync(d, { recursive: true, force: true }); });

function extraFor(tok, mock, check = 60) {
  const luaDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-refresh-lua-'));
  luaDirs.push(luaDir);
  fs.mkdirSync(path.join(luaDir, 'middleware'));
  fs.writeFileSync(path.join(luaDir, 'middleware', 'refresh_state.lua'), STATE_PROBE);
  return {
    'oauth-endpoints': { claude: { 'token-url': `${tok.url}/v1/oauth/token`, 'api-base-url': mock.url },
                         codex: { 'token-url': `${tok.url}/oauth/token`, 'api-base-url': mock.url } },
    'oauth-refresh': { 'check-seconds': check },
    lua: { paths: [luaDir], middleware: [{ name: 'refresh_state' }] },
  };
}

function chat(proxy, headers = {}, signal = undefined) {
  return fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST', signal, headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, max_tokens: 20, messages: [{ role: 'user', content: 'hi' }] }),
  });
}

async function state(proxy) {
  const r = await chat(proxy, { 'x-refresh-state': '1' });
  const j = await r.json();
  return JSON.parse(j.error.message)[FILE];
}

async function served(proxy) {
  return waitFor(async () => {
    const r = await fetch(`${proxy.url}/v1/models`);
    const j = await r.json();
    return j.data?.some((m) => m.id === MODEL);
  }, 5000);
}

function readCred(proxy) {
  return JSON.parse(fs.readFileSync(path.join(proxy.dir, 'auths', FILE), 'utf8'));
}

describe('OAuth refresh', () => {
  let tok, mock;
  before(async () => {
    tok = await startTokenServer();
    mock = await startMock();
  });
  after(async () => { await tok?.close(); await mock?.close(); });

  const reset = () => {
    tok.calls.length = 0; tok.reused = 0; tok.seq = 0; tok.mode = 'ok'; tok.delayMs = 0; tok.onAnswer = null;
    tok.expiresIn = 28800;
    tok.used.clear();
    mock.reset();
    // The upstream takes only the newest token the token server issued.
    mock.reply((rec) => (rec.headers.authorization === `Bearer at-${tok.seq}` ? { text: 'ok' }
      : { error: { status: 401, message: 'invalid bearer token' } }));
  };

  test('ahead of expiry: the scheduler refreshes, the rotated tokens are written back 0600', { timeout: 90000 }, async () => {
    reset();
    const proxy = await startProxy({ extra: extraFor(tok, mock, 0.1) });
    try {
      // Expires in 1 h: inside Claude's 4 h lead, so due now.
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() + 3600));
      assert.ok(await waitFor(() => tok.calls.length >= 1 && readCred(proxy).refresh_token === 'rt-1', 5000), proxy.stderr());
      const call = tok.calls[0].body;
      assert.equal(call.grant_type, 'refresh_token');
      assert.equal(call.refresh_token, 'rt-0');
      assert.equal(call.client_id, '9d1c250a-e61b-44d9-88ed-5944d1962f5e');
      const doc = readCred(proxy);
      assert.equal(doc.access_token, 'at-1');
      assert.equal(doc.type, 'claude');
      assert.equal(doc.note, 'keep me', 'other fields kept');
      const exp = Date.parse(doc.expired) / 1000;
      assert.ok(Math.abs(exp - (nowS() + 28800)) < 120, `expired ${doc.expired}`);
      assert.equal(fs.statSync(path.join(proxy.dir, 'auths', FILE)).mode & 0o777, 0o600);
      // Not due again (8 h token, 4 h lead): no second call, the new token is used.
      const r = await chat(proxy);
      assert.equal(r.status, 200, await r.clone().text());
      assert.equal(mock.last().headers.authorization, 'Bearer at-1');
      assert.equal(tok.calls.length, 1);
      const st = await state(proxy);
      assert.equal(st.failures, 0);
      assert.equal(st.needs_login, false);
      assert.ok(st.next_due > nowS() + 3 * 3600, JSON.stringify(st));
      assert.doesNotMatch(proxy.stderr() + proxy.stdout(), /rt-0|rt-1|at-1/, 'no token in the log');
    } finally { await proxy.stop(); }
  });

  test('20 concurrent requests on an expired token: one token call, all use the new token', { timeout: 90000 }, async () => {
    reset();
    tok.delayMs = 300;
    const proxy = await startProxy({ extra: extraFor(tok, mock, 60) });
    try {
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() - 60));
      assert.ok(await served(proxy));
      const rs = await Promise.all(Array.from({ length: 20 }, () => chat(proxy)));
      for (const r of rs) assert.equal(r.status, 200, await r.text());
      assert.equal(tok.calls.length, 1);
      assert.equal(tok.reused, 0);
      assert.equal(mock.requests.filter((q) => q.headers.authorization === 'Bearer at-1').length, 20);
      assert.equal(readCred(proxy).refresh_token, 'rt-1');
    } finally { await proxy.stop(); }
  });

  test('two cliproxy processes on one auth-dir: one token call', { timeout: 90000 }, async () => {
    reset();
    tok.delayMs = 200;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-refresh-shared-'));
    const auth = path.join(dir, 'auths');
    fs.mkdirSync(auth, { mode: 0o700 });
    writeCred(auth, credential(nowS() - 60));
    const text = buildConfig({ port: 11111, authDir: auth, extra: extraFor(tok, mock, 0.05) }).replace('port: 11111', 'port: ${PORT}');
    const a = await startProxy({ configText: text });
    const b = await startProxy({ configText: text });
    try {
      assert.ok(await waitFor(() => JSON.parse(fs.readFileSync(path.join(auth, FILE), 'utf8')).refresh_token === 'rt-1', 10000),
        `token calls ${tok.calls.length}\n--- a\n${a.stderr()}\n--- b\n${b.stderr()}`);
      // Both schedulers looked many times meanwhile; give them more turns.
      await sleep(500);
      assert.equal(tok.calls.length, 1, a.stderr() + b.stderr());
      assert.equal(tok.reused, 0);
      for (const p of [a, b]) {
        const r = await chat(p);
        assert.equal(r.status, 200, await r.text());
        assert.equal(mock.last().headers.authorization, 'Bearer at-1');
      }
    } finally { await a.stop(); await b.stop(); fs.rmSync(dir, { recursive: true, force: true }); }
  });

  test('a client that goes away during an on-demand refresh does not cut it', { timeout: 90000 }, async () => {
    reset();
    tok.delayMs = 400;
    const proxy = await startProxy({ extra: extraFor(tok, mock, 60) });
    try {
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() - 60));
      assert.ok(await served(proxy));
      const ac = new AbortController();
      const r = chat(proxy, {}, ac.signal).catch((e) => e);
      assert.ok(await waitFor(() => tok.calls.length === 1, 5000));
      ac.abort(); // while the token server is still answering
      await r;
      // The rotated tokens still land in the file, and the next request
      // uses them without another token call.
      assert.ok(await waitFor(() => readCred(proxy).refresh_token === 'rt-1', 5000), proxy.stderr());
      const r2 = await chat(proxy);
      assert.equal(r2.status, 200, await r2.text());
      assert.equal(tok.calls.length, 1);
      assert.equal(mock.last().headers.authorization, 'Bearer at-1');
    } finally { await proxy.stop(); }
  });

  test('an upstream 401 refreshes once and retries on the same account', { timeout: 90000 }, async () => {
    reset();
    tok.seq = 0;
    const proxy = await startProxy({ extra: extraFor(tok, mock, 60) });
    try {
      // Valid for 10 days: not due, but the upstream refuses at-0 (it
      // wants the newest token, which the token server has not issued).
      tok.seq = 0;
      mock.reply((rec) => (rec.headers.authorization === 'Bearer at-1' ? { text: 'ok' }
        : { error: { status: 401, message: 'invalid bearer token' } }));
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() + 10 * 86400));
      assert.ok(await served(proxy));
      const r = await chat(proxy);
      assert.equal(r.status, 200, await r.clone().text());
      assert.deepEqual(mock.requests.map((q) => q.headers.authorization), ['Bearer at-0', 'Bearer at-1']);
      assert.equal(tok.calls.length, 1);
      assert.equal(readCred(proxy).access_token, 'at-1');
    } finally { await proxy.stop(); }
  });

  test('invalid_grant: the account needs a new login and leaves the pool until its file changes', { timeout: 90000 }, async () => {
    reset();
    tok.mode = 'invalid_grant';
    const proxy = await startProxy({ extra: extraFor(tok, mock, 0.1) });
    try {
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() - 60));
      assert.ok(await waitFor(async () => (await state(proxy))?.needs_login === true, 5000), proxy.stderr());
      const st = await state(proxy);
      assert.equal(st.error_kind, 'invalid_grant');
      assert.match(st.last_error, /invalid_grant/);
      assert.equal(st.next_due, undefined);
      const before = mock.requests.length;
      const r = await chat(proxy);
      assert.notEqual(r.status, 200);
      assert.equal(mock.requests.length, before, 'the upstream was not asked');
      assert.equal(tok.calls.length, 1, 'no further token call');
      assert.match(proxy.stderr() + proxy.stdout(), /needs a new login/);
      // A new login (the file changes): back in the pool.
      tok.mode = 'ok';
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() + 10 * 86400, { access_token: 'at-0' }));
      tok.seq = 0;
      mock.reply({ text: 'ok' });
      assert.ok(await waitFor(async () => (await chat(proxy)).status === 200, 5000));
      assert.equal((await state(proxy)).needs_login, false);
    } finally { await proxy.stop(); }
  });

  test('a 500 from the token server backs off (5 min) and shows in the state', { timeout: 90000 }, async () => {
    reset();
    tok.mode = '500';
    const proxy = await startProxy({ extra: extraFor(tok, mock, 0.05) });
    try {
      writeCred(path.join(proxy.dir, 'auths'), credential(nowS() - 60));
      assert.ok(await waitFor(() => tok.calls.length >= 1, 5000));
      assert.ok(await waitFor(async () => (await state(proxy))?.failures === 1, 5000));
      const st = await state(proxy);
      assert.match(st.last_error, /500/);
      assert.ok(st.retry_at >= nowS() + 250 && st.retry_at <= nowS() + 301, JSON.stringify(st));
      assert.equal(st.next_due, st.retry_at);
      // Many scheduler turns later: still one call. A request on the
      // expired token does not call either (it is backing off).
      await sleep(500);
      await (await chat(proxy)).text();
      assert.equal(tok.calls.length, 1);
      assert.match(proxy.stderr() + proxy.stdout(), /refresh claude-user@example.com.json failed \(1 in a row\): .*500.*next try in 300 s/);
    } finally { await proxy.stop(); }
  });

  test('kill -9 during token writes, 20 times: the file is always a valid credential', { timeout: 90000 }, async () => {
    reset();
    // Tokens that live 60 s are always inside Claude's 4 h lead: the
    // scheduler refreshes on every turn, and only the proxy writes the file.
    tok.expiresIn = 60;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-refresh-kill-'));
    const auth = path.join(dir, 'auths');
    fs.mkdirSync(auth, { mode: 0o700 });
    writeCred(auth, credential(nowS() - 60));
    const text = buildConfig({ port: 11111, authDir: auth, extra: extraFor(tok, mock, 0.05) }).replace('port: 11111', 'port: ${PORT}');
    try {
      for (let i = 0; i < 20; i++) {
        const p = await startProxy({ configText: text });
        const calls = tok.calls.length;
        // Kill it as the answer goes out: while it parses and writes.
        const killed = new Promise((r) => { tok.onAnswer = () => { setTimeout(() => { try { process.kill(p.pid, 'SIGKILL'); } catch {} r(); }, i % 4); }; });
        await Promise.race([killed, sleep(5000)]);
        tok.onAnswer = null;
        await waitFor(() => p.exited(), 5000);
        if (!p.exited()) process.kill(p.pid, 'SIGKILL');
        assert.ok(tok.calls.length > calls, `round ${i}: the token server was asked`);
        const doc = JSON.parse(fs.readFileSync(path.join(auth, FILE), 'utf8'));
        assert.equal(doc.type, 'claude');
        assert.ok(tok.issued.has(doc.refresh_token), `round ${i}: refresh_token ${doc.refresh_token} was issued`);
        assert.equal(doc.access_token, doc.refresh_token === 'rt-0' ? 'at-0' : doc.refresh_token.replace('rt-', 'at-'));
        assert.equal(fs.statSync(path.join(auth, FILE)).mode & 0o777, 0o600);
        await p.stop().catch(() => {});
      }
    } finally { fs.rmSync(dir, { recursive: true, force: true }); }
  });
});
