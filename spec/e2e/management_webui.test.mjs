// Issue 13, the rest of the OAuth starters (fact sheet §1.4):
//   - ?is_webui=true: a forwarder on the provider's own callback port
//     (127.0.0.1 only) sends the browser on to the main port's
//     /<provider>/callback with its query, then stops; a port in use gives
//     a JSON error; a second login for the port takes the forwarder over;
//   - GET /qwen-auth-url: Qwen's device flow, the token endpoint polled in
//     the background, get-auth-status wait -> ok / error;
//   - GET /iflow-auth-url (code flow, the API key looked up after the
//     exchange) and POST /iflow-auth-url (the browser cookie);
//   - the access rules of the new routes (no key, wrong key, remote).
// The callback ports are free ports set by oauth-endpoints.<p>.callback-port
// (the real ones, 54545 ..., may be taken on a shared machine).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';
import { mgmtCall, sendJson, bodyServer } from './lib/mgmt.mjs';

const SECRET = 'webui-mgmt-secret-7311';
const CLIENT = 'sk-webui-client';
const b64url = (buf) => Buffer.from(buf).toString('base64url');
const QWEN_CLIENT = 'f0304373b74a44d2b584a3fb70ca9e56';
const IFLOW_CLIENT = '10009311001';
const IFLOW_SECRET = '4Z3YjXycVsQvyGF1etiNlIBB4RsqSDtW';
const COOKIE = 'BXAuth=web-COOKIE-secret; other=2';

const mock = { failures: [], grants: new Map(), seq: 0, qwen: { steps: ['ok'], challenge: null, polls: 0, device: 0 },
  iflow: { codes: new Map() }, inference: [] };
const send = sendJson;
function refuse(res, why) {
  mock.failures.push(why);
  send(res, 400, { error: 'invalid_request', error_description: `mock: ${why}` });
}

function onClaudeToken(raw, res) {
  const body = JSON.parse(raw);
  const g = mock.grants.get(body.code);
  if (!g) return refuse(res, 'unknown code');
  mock.grants.delete(body.code);
  if (body.redirect_uri !== g.redirect_uri) return refuse(res, 'redirect_uri');
  if (b64url(crypto.createHash('sha256').update(body.code_verifier || '').digest()) !== g.challenge) return refuse(res, 'PKCE');
  return send(res, 200, { token_type: 'Bearer', access_token: 'sk-ant-oat01-WEBUI-ACCESS', refresh_token: 'sk-ant-ort01-WEBUI-REFRESH',
    expires_in: 28800, account: { uuid: 'acc-w', email_address: 'webui@example.com' }, organization: { uuid: 'org-w', name: 'W' } });
}

function onQwen(p, raw, res) {
  const q = new URLSearchParams(raw);
  if (q.get('client_id') !== QWEN_CLIENT) return refuse(res, 'qwen client_id');
  if (p === '/qwen/device/code') {
    if (q.get('code_challenge_method') !== 'S256') return refuse(res, 'qwen challenge method');
    mock.qwen.challenge = q.get('code_challenge');
    mock.qwen.device++;
    return send(res, 200, { device_code: `qdev-${mock.qwen.device}`, user_code: 'WQ-5678',
      verification_uri: 'https://chat.qwen.example/device',
      verification_uri_complete: 'https://chat.qwen.example/device?user_code=WQ-5678', expires_in: 300, interval: 1 });
  }
  if (q.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:device_code') return refuse(res, 'qwen grant');
  if (q.get('device_code') !== `qdev-${mock.qwen.device}`) return refuse(res, 'qwen device_code');
  const challenge = b64url(crypto.createHash('sha256').update(q.get('code_verifier') || '').digest());
  if (challenge !== mock.qwen.challenge) return refuse(res, 'qwen PKCE verifier does not match');
  mock.qwen.polls++;
  const step = mock.qwen.steps.length > 1 ? mock.qwen.steps.shift() : mock.qwen.steps[0];
  if (step === 'pending') return send(res, 400, { error: 'authorization_pending' });
  if (step === 'denied') return send(res, 400, { error: 'access_denied' });
  return send(res, 200, { access_token: 'qat-WEBUI-ACCESS', refresh_token: 'qrt-WEBUI-REFRESH', expires_in: 21600,
    token_type: 'Bearer', resource_url: mockUrl });
}

function onIflow(p, req, raw, res, u) {
  if (p === '/iflow/token') {
    const q = new URLSearchParams(raw);
    const basic = 'Basic ' + Buffer.from(`${IFLOW_CLIENT}:${IFLOW_SECRET}`).toString('base64');
    if (req.headers.authorization !== basic) return refuse(res, 'iflow basic auth');
    const g = mock.iflow.codes.get(q.get('code'));
    if (!g || g !== q.get('redirect_uri')) return refuse(res, 'iflow code or redirect_uri');
    mock.iflow.codes.delete(q.get('code'));
    return send(res, 200, { access_token: 'iat-WEBUI-ACCESS', refresh_token: 'irt-WEBUI-REFRESH', expires_in: 172800,
      token_type: 'bearer', scope: 'read' });
  }
  if (p === '/iflow/getUserInfo') {
    if (u.searchParams.get('accessToken') !== 'iat-WEBUI-ACCESS') return send(res, 401, { success: false });
    return send(res, 200, { success: true, data: { apiKey: 'sk-iflow-WEBUI-KEY', email: 'iw@example.com' } });
  }
  if (p === '/iflow/apikey') {
    if (req.headers.cookie !== COOKIE) return send(res, 401, { success: false, message: 'not logged in' });
    if (req.method === 'GET') return send(res, 200, { success: true, data: { name: 'web-key', apiKeyMask: 'sk-***' } });
    return send(res, 200, { success: true, data: { name: 'web-key', apiKey: 'sk-iflow-WEBCOOKIE-KEY', expireTime: '2027-01-01 00:00' } });
  }
  return send(res, 404, { error: 'not_found' });
}

let server, mockUrl, proxy, authDir, tmp, ports;

before(async () => {
  server = bodyServer((req, res, raw) => {
    const u = new URL(req.url, 'http://x');
    const p = u.pathname;
    if (req.method === 'POST' && p === '/claude/token') return onClaudeToken(raw, res);
    if (p.startsWith('/qwen/')) return onQwen(p, raw, res);
    if (p.startsWith('/iflow/')) return onIflow(p, req, raw, res, u);
    if (req.method === 'POST' && p === '/v1/chat/completions') {
      mock.inference.push(req.headers.authorization);
      return send(res, 200, { id: 'c1', object: 'chat.completion', created: 1, model: 'qwen3-coder-plus',
        choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } });
    }
    return send(res, 404, { error: 'not_found' });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${server.address().port}`;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-mgmt-webui-'));
  authDir = path.join(tmp, 'auths');
  fs.mkdirSync(authDir, { mode: 0o700 });
  ports = { claude: await freePort(), codex: await freePort(), iflow: await freePort() };
  proxy = await startProxy({
    apiKeys: [CLIENT],
    extra: {
      host: '0.0.0.0', // the remote-address case connects to a non-loopback address
      'auth-dir': authDir,
      'remote-management': { 'secret-key': SECRET },
      'oauth-endpoints': {
        claude: { 'auth-url': 'https://claude.example/oauth/authorize', 'token-url': `${mockUrl}/claude/token`,
          'callback-port': ports.claude },
        codex: { 'auth-url': 'https://auth.example/oauth/authorize', 'token-url': `${mockUrl}/codex/token`,
          'callback-port': ports.codex },
        qwen: { 'device-url': `${mockUrl}/qwen/device/code`, 'token-url': `${mockUrl}/qwen/token`,
          'api-base-url': `${mockUrl}/v1` },
        iflow: { 'auth-url': 'https://iflow.example/oauth', 'token-url': `${mockUrl}/iflow/token`,
          'userinfo-url': `${mockUrl}/iflow/getUserInfo`, 'api-key-url': `${mockUrl}/iflow/apikey`,
          'api-base-url': `${mockUrl}/v1`, 'callback-port': ports.iflow },
      },
    },
  });
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
  await new Promise((r) => server.close(r));
  // no token, key or cookie in the log of the whole run
  for (const s of ['WEBUI-ACCESS', 'WEBUI-REFRESH', 'WEBUI-KEY', 'WEBCOOKIE-KEY', 'web-COOKIE-secret', SECRET]) {
    assert.ok(!proxy.stderr().includes(s), `${s} in the log`);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

const call = (p, { key = SECRET, ...o } = {}) => mgmtCall(proxy.url, p, { key, ...o });
const status = async (state) => (await call(`/get-auth-status?state=${encodeURIComponent(state)}`)).json;

// A raw GET to the forwarder (no redirect following).
async function forward(port, target, method = 'GET') {
  const r = await fetch(`http://127.0.0.1:${port}${target}`, { method, redirect: 'manual' });
  await r.text();
  return r;
}
// true once nothing listens on 127.0.0.1:port
const closed = (port) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1');
  s.once('connect', () => { s.destroy(); resolve(false); });
  s.once('error', () => resolve(true));
});

function approve(authUrl) {
  const q = new URL(authUrl).searchParams;
  const code = `code-${++mock.seq}-${crypto.randomBytes(6).toString('hex')}`;
  mock.grants.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri') });
  return code;
}

test('is_webui: the forwarder on the callback port sends the browser to the main port, then stops', async () => {
  assert.ok(await closed(ports.claude), 'nothing listens before the login');
  const s = await call('/anthropic-auth-url?is_webui=true');
  assert.equal(s.status, 200, s.text);
  const redirect = new URL(new URL(s.json.url).searchParams.get('redirect_uri'));
  assert.equal(redirect.href, `http://localhost:${ports.claude}/callback`);

  // bad input is the server's answer (400, 431), never a crash; the forwarder stays
  for (const bytes of ['GARBAGE\r\n\r\n', `GET /callback?${'x'.repeat(20000)} HTTP/1.1\r\nHost: a\r\n\r\n`,
    'GET /callback HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n']) {
    const answer = await new Promise((resolve) => {
      const c = net.connect(ports.claude, '127.0.0.1');
      let got = '';
      c.on('data', (d) => { got += d; });
      c.on('close', () => resolve(got));
      c.on('error', () => resolve(got));
      c.end(bytes);
    });
    assert.match(answer, /^HTTP\/1\.1 (400|404|413|431) /, JSON.stringify(answer.slice(0, 80)));
  }
  // anything but GET on the callback path is 404, and the forwarder stays
  assert.equal((await forward(ports.claude, '/callback', 'POST')).status, 404);
  assert.equal((await forward(ports.claude, '/other?code=x')).status, 404);
  assert.equal((await forward(ports.claude, '/')).status, 404);

  const code = approve(s.json.url);
  const r = await forward(ports.claude, `/callback?code=${code}&state=${encodeURIComponent(s.json.state)}`);
  assert.equal(r.status, 302);
  const loc = new URL(r.headers.get('location'));
  assert.equal(loc.origin, proxy.url);
  assert.equal(loc.pathname, '/anthropic/callback');
  assert.equal(loc.searchParams.get('code'), code);
  assert.equal(loc.searchParams.get('state'), s.json.state);
  // the browser follows it
  const page = await fetch(loc);
  assert.equal(page.status, 200, `${await page.clone().text()}\nmock: ${mock.failures.join('; ')}`);
  assert.match(await page.text(), /Login successful/);
  assert.deepEqual(await status(s.json.state), { status: 'ok', file: 'claude-webui@example.com.json' });
  await until(() => closed(ports.claude), 'the forwarder closes after the callback');
  // the code is not in the log (the forwarder and the callback log their URL)
  assert.ok(!proxy.stderr().includes(code), 'the code is redacted in the log');
});

test('is_webui: a busy port is a JSON error; a second login takes the forwarder over', async () => {
  const busy = net.createServer();
  await new Promise((r) => busy.listen(ports.codex, '127.0.0.1', r));
  try {
    const s = await call('/codex-auth-url?is_webui=true');
    assert.equal(s.status, 409, s.text);
    assert.equal(s.json.status, 'error');
    assert.match(s.json.error, new RegExp(`port ${ports.codex} .*in use`));
    // without is_webui the login starts (the redirect can be pasted)
    assert.equal((await call('/codex-auth-url')).status, 200);
  } finally {
    await new Promise((r) => busy.close(r));
  }
  assert.equal(proxy.exited(), null, 'the proxy is still running');

  const a = await call('/anthropic-auth-url?is_webui=true');
  const b = await call('/anthropic-auth-url?is_webui=true');
  assert.equal(a.status, 200, a.text);
  assert.equal(b.status, 200, b.text);
  assert.ok(!(await closed(ports.claude)));
  const code = approve(b.json.url);
  const r = await forward(ports.claude, `/callback?code=${code}&state=${encodeURIComponent(b.json.state)}`);
  assert.equal(r.status, 302);
  const page = await fetch(r.headers.get('location'));
  assert.equal(page.status, 200, await page.clone().text());
  await page.text();
  assert.equal((await status(b.json.state)).status, 'ok');
  assert.deepEqual(await status(a.json.state), { status: 'wait' }, 'the first login can still be pasted');
  await until(() => closed(ports.claude), 'one forwarder, closed after the callback');
});

test('is_webui: a login completed by a pasted URL closes its forwarder', async () => {
  // (iflow: no other of its logins waits here; a waiting one would keep it)
  const s = await call('/iflow-auth-url?is_webui=true');
  assert.equal(s.status, 200, s.text);
  assert.ok(!(await closed(ports.iflow)), 'the forwarder listens');
  const redirectUri = new URL(s.json.url).searchParams.get('redirect');
  const code = `icode-${crypto.randomBytes(4).toString('hex')}`;
  mock.iflow.codes.set(code, redirectUri);
  const r = await call('/oauth-callback', { method: 'POST',
    body: { provider: 'iflow', redirect_url: `${redirectUri}?code=${code}&state=${encodeURIComponent(s.json.state)}` } });
  assert.equal(r.status, 200, `${r.text}\nmock: ${mock.failures.join('; ')}`);
  await until(() => closed(ports.iflow), 'the forwarder closes once its login is done');
});

test('qwen: the device flow polls in the background; get-auth-status wait -> ok; the account serves', async () => {
  mock.qwen.steps = ['pending', 'pending', 'ok'];
  const s = await call('/qwen-auth-url');
  assert.equal(s.status, 200, s.text);
  assert.deepEqual(Object.keys(s.json), ['status', 'url', 'state', 'user_code']);
  assert.equal(s.json.url, 'https://chat.qwen.example/device?user_code=WQ-5678');
  assert.equal(s.json.user_code, 'WQ-5678');
  assert.deepEqual(await status(s.json.state), { status: 'wait' });
  const done = await until(async () => {
    const st = await status(s.json.state);
    return st.status !== 'wait' && st;
  }, 'the background poll ends', 20000);
  assert.equal(done.status, 'ok', `${JSON.stringify(done)}\nmock: ${mock.failures.join('; ')}`);
  assert.match(done.file, /^qwen-\d+\.json$/);
  assert.ok(mock.qwen.polls >= 3, `${mock.qwen.polls} polls`);
  const file = path.join(authDir, done.file);
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.equal(doc.type, 'qwen');
  assert.equal(doc.access_token, 'qat-WEBUI-ACCESS');
  assert.equal(doc.resource_url, mockUrl);
  const res = await until(async () => {
    const r = await fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST',
      headers: { Authorization: `Bearer ${CLIENT}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'qwen3-coder-flash', messages: [{ role: 'user', content: 'hi' }] }) });
    return r.status === 200 && r;
  }, 'the new qwen account serves');
  assert.equal((await res.json()).choices[0].message.content, 'hi');
  assert.equal(mock.inference.at(-1), 'Bearer qat-WEBUI-ACCESS');
  // a declined login ends in error
  mock.qwen.steps = ['pending', 'denied'];
  const d = await call('/qwen-auth-url');
  assert.equal(d.status, 200, d.text);
  const fail = await until(async () => {
    const st = await status(d.json.state);
    return st.status !== 'wait' && st;
  }, 'the declined poll ends', 20000);
  assert.equal(fail.status, 'error');
  assert.match(fail.error, /access denied/);
});

test('a reload in the middle: the device poll goes on, the forwarder keeps forwarding', async () => {
  mock.qwen.steps = ['pending'];
  const q = await call('/qwen-auth-url');
  assert.equal(q.status, 200, q.text);
  const w = await call('/anthropic-auth-url?is_webui=true');
  assert.equal(w.status, 200, w.text);
  const polls = mock.qwen.polls;
  await until(() => mock.qwen.polls > polls, 'a first poll');
  // a config edit is a reload: the generation that started both retires
  const reloads = (proxy.stderr().match(/reload/g) || []).length;
  assert.equal((await call('/debug', { method: 'PUT', body: { value: true } })).status, 200);
  await until(() => (proxy.stderr().match(/reload/g) || []).length > reloads, 'the reload');
  const after = mock.qwen.polls;
  await until(() => mock.qwen.polls > after + 1, 'polls after the reload');
  mock.qwen.steps = ['ok'];
  const done = await until(async () => {
    const st = await status(q.json.state);
    return st.status !== 'wait' && st;
  }, 'the poll ends after the reload', 20000);
  assert.equal(done.status, 'ok', JSON.stringify(done));
  assert.equal((await call('/debug', { method: 'PUT', body: { value: false } })).status, 200);
  // the forwarder was opened by the old generation and still answers
  const r = await forward(ports.claude, `/callback?code=${approve(w.json.url)}&state=${encodeURIComponent(w.json.state)}`);
  assert.equal(r.status, 302);
  const page = await fetch(r.headers.get('location'));
  assert.equal(page.status, 200, await page.clone().text());
  await page.text();
  assert.equal((await status(w.json.state)).status, 'ok');
});

test('iflow: the code flow (GET) through the forwarder, and the cookie login (POST)', async () => {
  const s = await call('/iflow-auth-url?is_webui=true');
  assert.equal(s.status, 200, s.text);
  const u = new URL(s.json.url);
  assert.equal(u.origin + u.pathname, 'https://iflow.example/oauth');
  const redirectUri = u.searchParams.get('redirect');
  assert.equal(redirectUri, `http://localhost:${ports.iflow}/oauth2callback`);
  const code = `icode-${crypto.randomBytes(4).toString('hex')}`;
  mock.iflow.codes.set(code, redirectUri);
  const r = await forward(ports.iflow, `/oauth2callback?code=${code}&state=${encodeURIComponent(s.json.state)}`);
  assert.equal(r.status, 302);
  assert.equal(new URL(r.headers.get('location')).pathname, '/iflow/callback');
  const page = await fetch(r.headers.get('location'));
  assert.equal(page.status, 200, `${await page.clone().text()}\nmock: ${mock.failures.join('; ')}`);
  await page.text();
  assert.deepEqual(await status(s.json.state), { status: 'ok', file: 'iflow-iw@example.com.json' });
  const doc = JSON.parse(fs.readFileSync(path.join(authDir, 'iflow-iw@example.com.json'), 'utf8'));
  assert.equal(doc.api_key, 'sk-iflow-WEBUI-KEY');

  const bad = await call('/iflow-auth-url', { method: 'POST', body: { cookie: 'nothing=here' } });
  assert.equal(bad.status, 400);
  assert.match(bad.json.error, /BXAuth/);
  const wrong = await call('/iflow-auth-url', { method: 'POST', body: { cookie: 'BXAuth=stale' } });
  assert.equal(wrong.status, 400);
  assert.match(wrong.json.error, /API-key request failed/);
  const c = await call('/iflow-auth-url', { method: 'POST', body: { cookie: COOKIE } });
  assert.equal(c.status, 200, `${c.text}\nmock: ${mock.failures.join('; ')}`);
  assert.deepEqual(c.json, { status: 'ok', file: 'iflow-web-key.json', email: 'web-key', type: 'iflow' });
  const cdoc = JSON.parse(fs.readFileSync(path.join(authDir, 'iflow-web-key.json'), 'utf8'));
  assert.equal(cdoc.api_key, 'sk-iflow-WEBCOOKIE-KEY');
  assert.equal(cdoc.cookie, COOKIE);
  assert.equal(fs.statSync(path.join(authDir, 'iflow-web-key.json')).mode & 0o777, 0o600);
});

// One request from a given loopback address (each failure counts against
// its address: five ban it, so every case comes from its own).
function from(localAddress, method, p, headers, body) {
  return new Promise((resolve, reject) => {
    const u = new URL(`${proxy.url}/v0/management${p}`);
    const req = http.request({ host: '127.0.0.1', port: u.port, path: u.pathname + u.search, method, headers, localAddress },
      (res) => {
        let t = '';
        res.on('data', (c) => { t += c; });
        res.on('end', () => resolve({ status: res.statusCode, text: t }));
      });
    req.on('error', reject);
    req.end(body);
  });
}

test('the new routes: no key 401, wrong key 401, a remote address 403', async () => {
  let n = 20;
  for (const [method, p] of [['GET', '/qwen-auth-url'], ['GET', '/iflow-auth-url'], ['POST', '/iflow-auth-url'],
    ['GET', '/anthropic-auth-url?is_webui=true']]) {
    const body = method === 'POST' ? JSON.stringify({ cookie: COOKIE }) : undefined;
    const none = await from(`127.0.0.${n++}`, method, p, {}, body);
    assert.equal(none.status, 401, `${method} ${p} without a key`);
    assert.deepEqual(JSON.parse(none.text), { error: 'missing management key' });
    const wrong = await from(`127.0.0.${n++}`, method, p, { 'X-Management-Key': 'wrong' }, body);
    assert.equal(wrong.status, 401, `${method} ${p} with a wrong key`);
    assert.deepEqual(JSON.parse(wrong.text), { error: 'invalid management key' });
  }
  // the wrong keys above did not start a forwarder
  assert.ok(await closed(ports.claude));
  // one left open for the drain at the end (exit 0 is checked in after())
  assert.equal((await call('/anthropic-auth-url?is_webui=true')).status, 200);
  assert.ok(!(await closed(ports.claude)));
});

test('the new routes from a non-loopback address: 403 without allow-remote', async (t) => {
  const lan = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
  if (!lan) return t.skip('this machine has no non-loopback IPv4 address');
  for (const p of ['/qwen-auth-url', '/iflow-auth-url', '/anthropic-auth-url?is_webui=true']) {
    const r = await fetch(`http://${lan.address}:${new URL(proxy.url).port}/v0/management${p}`,
      { headers: { 'X-Management-Key': SECRET } });
    assert.equal(r.status, 403, p);
    assert.deepEqual(await r.json(), { error: 'remote management disabled' });
  }
});
