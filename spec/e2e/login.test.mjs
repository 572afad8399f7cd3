// `cliproxy login`: the real binary against a mock OAuth server on loopback
// (config oauth-endpoints points the authorize, token and device URLs at
// it). The test plays the browser: it reads the printed URL, checks its
// parameters, and GETs the callback. The mock checks what a real server
// would: the PKCE verifier against the challenge, the exchange body's
// fields and their order, the redirect URI. No browser is opened
// (--no-browser in every run).
import { runCli } from './lib/cli.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { BIN, ROOT, freePort, startProxy } from './lib/proxy.mjs';
import { bodyServer } from './lib/mgmt.mjs';

const T = (ms = 60000) => ({ timeout: ms });
const b64url = (buf) => Buffer.from(buf).toString('base64url');
const jwt = (claims) => `${b64url('{"alg":"none"}')}.${b64url(JSON.stringify(claims))}.sig`;

// ---- the mock OAuth server ------------------------------------------------

const mock = {
  server: null,
  url: '',
  grants: new Map(), // code -> { challenge, redirect_uri, state }
  exchanges: [],     // bodies the token endpoint accepted
  failures: [],      // why the mock refused a request (shown when a test fails)
  tokenError: null,  // { status, body } answered instead of tokens
  device: null,      // { interval, expires_in, steps: [...], polls: [] }
  inference: [],     // Authorization headers the upstream saw
  seq: 0,
  issue(challenge, redirect_uri, state) {
    const code = `code-${++this.seq}-${crypto.randomBytes(6).toString('hex')}`;
    this.grants.set(code, { challenge, redirect_uri, state });
    return code;
  },
};

const EXCHANGE_ORDER = {
  claude: ['grant_type', 'code', 'redirect_uri', 'client_id', 'code_verifier', 'state'],
  codex: ['grant_type', 'client_id', 'code', 'redirect_uri', 'code_verifier'],
};
const CLIENT_ID = { claude: '9d1c250a-e61b-44d9-88ed-5944d1962f5e', codex: 'app_EMoamEEZ73f0CkXaXp7hrann' };
const DEVICE_REDIRECT = 'https://auth.openai.com/deviceauth/callback';

function send(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function refuse(res, why) {
  mock.failures.push(why);
  send(res, 400, { error: 'invalid_request', error_description: `mock: ${why}` });
}

function tokensFor(provider, n) {
  if (provider === 'claude') {
    return { token_type: 'Bearer', access_token: `sk-ant-oat01-ACCESS-${n}`, refresh_token: `sk-ant-ort01-REFRESH-${n}`,
      expires_in: 28800, scope: 'user:inference',
      account: { uuid: 'acc-uuid-1', email_address: 'me@example.com' },
      organization: { uuid: 'org-uuid-1', name: 'Example Org' } };
  }
  return { access_token: `codex-ACCESS-${n}`, refresh_token: `codex-REFRESH-${n}`, expires_in: 864000,
    id_token: jwt({ email: 'dev@example.com', 'https://api.openai.com/auth':
      { chatgpt_account_id: 'acct-42', chatgpt_plan_type: 'plus' } }) };
}

function onToken(provider, raw, res) {
  let body;
  let keys;
  if (provider === 'claude') {
    try { body = JSON.parse(raw); } catch { return refuse(res, 'claude token body is not JSON'); }
    keys = Object.keys(body);
  } else {
    const q = new URLSearchParams(raw);
    keys = [...q.keys()];
    body = Object.fromEntries(q);
  }
  if (JSON.stringify(keys) !== JSON.stringify(EXCHANGE_ORDER[provider])) {
    return refuse(res, `exchange keys ${keys.join(',')}`);
  }
  if (body.grant_type !== 'authorization_code') return refuse(res, 'grant_type');
  if (body.client_id !== CLIENT_ID[provider]) return refuse(res, 'client_id');
  const g = mock.grants.get(body.code);
  if (!g) return refuse(res, 'unknown code');
  mock.grants.delete(body.code); // a code is good once
  if (body.redirect_uri !== g.redirect_uri) return refuse(res, `redirect_uri ${body.redirect_uri}`);
  const challenge = b64url(crypto.createHash('sha256').update(body.code_verifier || '').digest());
  if (challenge !== g.challenge) return refuse(res, 'PKCE verifier does not match the challenge');
  if (provider === 'claude' && body.state !== g.state) return refuse(res, 'state');
  if (mock.tokenError) return send(res, mock.tokenError.status, mock.tokenError.body);
  mock.exchanges.push({ provider, body });
  return send(res, 200, tokensFor(provider, mock.exchanges.length));
}

function onDevice(kind, raw, res) {
  const d = mock.device;
  if (!d) return refuse(res, 'no device flow scripted');
  let body;
  try { body = JSON.parse(raw); } catch { return refuse(res, 'device body is not JSON'); }
  if (kind === 'usercode') {
    if (body.client_id !== CLIENT_ID.codex) return refuse(res, 'device client_id');
    return send(res, 200, { device_auth_id: 'dev-auth-1', user_code: 'ABCD-1234', interval: d.interval,
      ...(d.expires_in ? { expires_in: d.expires_in } : {}) });
  }
  if (body.device_auth_id !== 'dev-auth-1' || body.user_code !== 'ABCD-1234') return refuse(res, 'device poll body');
  d.polls.push(Date.now());
  const step = d.steps.length > 1 ? d.steps.shift() : d.steps[0];
  if (step === 'pending403') return send(res, 403, { error: { message: 'pending' } });
  if (step === 'pending404') return send(res, 404, { error: { message: 'not yet' } });
  if (step === 'slow_down') return send(res, 400, { error: 'slow_down' });
  if (step === 'reset') return res.socket.resetAndDestroy();
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const code = mock.issue(challenge, DEVICE_REDIRECT, null);
  return send(res, 200, { authorization_code: code, code_verifier: verifier, code_challenge: challenge });
}

function onInference(req, raw, res) {
  mock.inference.push(req.headers.authorization);
  send(res, 200, { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-sonnet-4-5',
    content: [{ type: 'text', text: 'hi from the mock' }], stop_reason: 'end_turn', stop_sequence: null,
    usage: { input_tokens: 3, output_tokens: 4 } });
}

before(async () => {
  mock.server = bodyServer((req, res, raw) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (req.method === 'POST' && p === '/claude/token') return onToken('claude', raw, res);
    if (req.method === 'POST' && p === '/codex/token') return onToken('codex', raw, res);
    if (req.method === 'POST' && p === '/codex/deviceauth/usercode') return onDevice('usercode', raw, res);
    if (req.method === 'POST' && p === '/codex/deviceauth/token') return onDevice('token', raw, res);
    if (req.method === 'POST' && p === '/v1/messages') return onInference(req, raw, res);
    if (req.method === 'GET' && p === '/issue') { // the fake browser's "the user approved"
      const q = new URL(req.url, 'http://x').searchParams;
      return send(res, 200, { code: mock.issue(q.get('challenge'), q.get('redirect_uri'), q.get('state')) });
    }
    return send(res, 404, { error: 'not_found' });
  });
  await new Promise((r) => mock.server.listen(0, '127.0.0.1', r));
  mock.url = `http://127.0.0.1:${mock.server.address().port}`;
});

after(async () => {
  await new Promise((r) => mock.server.close(r));
});

// ---- running the command --------------------------------------------------

const endpoints = () => ({
  claude: { 'auth-url': 'https://claude.example/oauth/authorize', 'token-url': `${mock.url}/claude/token`,
    'api-base-url': mock.url },
  codex: { 'auth-url': 'https://auth.example/oauth/authorize', 'token-url': `${mock.url}/codex/token`,
    'device-url': `${mock.url}/codex/deviceauth/usercode`, 'api-base-url': mock.url },
});

function setup() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-login-'));
  const authDir = path.join(dir, 'auths');
  const configPath = path.join(dir, 'config.yaml');
  const yaml = [
    'host: 127.0.0.1',
    'port: 1',
    `auth-dir: ${JSON.stringify(authDir)}`,
    'oauth-endpoints:',
    ...Object.entries(endpoints()).flatMap(([name, e]) => [
      `  ${name}:`, ...Object.entries(e).map(([k, v]) => `    ${k}: ${JSON.stringify(v)}`)]),
  ].join('\n') + '\n';
  fs.writeFileSync(configPath, yaml);
  return { dir, authDir, configPath, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}


const run = (args, opts = {}) => runCli(args, { killMs: 45000, ...opts });

// The authorize URL the command printed, its parameters checked.
async function authorizeUrl(p, provider, port) {
  const m = await p.waitFor(/^ {2}(https:\/\/\S+)$/m);
  const u = new URL(m[1]);
  const q = u.searchParams;
  assert.equal(u.origin + u.pathname, endpoints()[provider]['auth-url']);
  assert.equal(q.get('client_id'), CLIENT_ID[provider]);
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('code_challenge_method'), 'S256');
  assert.match(q.get('code_challenge'), /^[A-Za-z0-9_-]{43}$/);
  assert.ok(q.get('state').length >= 16, 'a random state');
  const cbPath = provider === 'claude' ? '/callback' : '/auth/callback';
  assert.equal(q.get('redirect_uri'), `http://localhost:${port}${cbPath}`);
  if (provider === 'claude') {
    assert.equal(q.get('code'), 'true');
    assert.equal(q.get('scope'), 'user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload');
  } else {
    assert.equal(q.get('scope'), 'openid email profile offline_access');
    assert.equal(q.get('prompt'), 'login');
    assert.equal(q.get('id_token_add_organizations'), 'true');
    assert.equal(q.get('codex_cli_simplified_flow'), 'true');
  }
  return { state: q.get('state'), challenge: q.get('code_challenge'), redirect: q.get('redirect_uri') };
}

// What the browser does after the user approves: GET the redirect URI. A
// browser tries 127.0.0.1 for localhost when ::1 refuses; node may not.
async function browse(redirect, params) {
  const u = new URL(redirect);
  u.hostname = '127.0.0.1';
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  const r = await fetch(u);
  return { status: r.status, text: await r.text() };
}

function hasIPv6Loopback() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(0, '::1', () => srv.close(() => resolve(true)));
  });
}

function readCred(authDir, name) {
  const file = path.join(authDir, name);
  const st = fs.statSync(file);
  return { mode: st.mode & 0o777, doc: JSON.parse(fs.readFileSync(file, 'utf8')), text: fs.readFileSync(file, 'utf8') };
}

const noSecrets = (r) => {
  assert.doesNotMatch(r.out + r.err, /ACCESS|REFRESH|code-\d+-/, 'no token or code is printed');
};

// ---- the tests ------------------------------------------------------------

test('claude: code flow through the callback; the file is CLIProxyAPI\'s and the proxy serves it', T(), async () => {
  const s = setup();
  const port = await freePort();
  try {
    const p = run(['login', 'claude', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'claude', port);
    await p.waitFor(/Waiting for the browser/);
    const code = mock.issue(a.challenge, a.redirect, a.state);
    const page = await browse(a.redirect, { code, state: a.state });
    // the browser's page waits for the exchange and tells its outcome
    assert.equal(page.status, 200);
    assert.match(page.text, /Login successful.*Saved claude-me@example\.com\.json \(me@example\.com\)/s);
    const r = await p.done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Exchanging the code at http:\/\/127\.0\.0\.1:\d+\/claude\/token/);
    const file = path.join(s.authDir, 'claude-me@example.com.json');
    assert.ok(r.out.includes(`Saved ${file} (me@example.com)`), r.out);
    noSecrets(r);

    const { mode, doc, text } = readCred(s.authDir, 'claude-me@example.com.json');
    assert.equal(mode, 0o600);
    const n = mock.exchanges.length;
    assert.deepEqual(Object.keys(doc).slice(0, 7),
      ['id_token', 'access_token', 'refresh_token', 'last_refresh', 'email', 'type', 'expired']);
    assert.equal(doc.type, 'claude');
    assert.equal(doc.email, 'me@example.com');
    assert.equal(doc.access_token, `sk-ant-oat01-ACCESS-${n}`);
    assert.equal(doc.refresh_token, `sk-ant-ort01-REFRESH-${n}`);
    assert.equal(doc.account_uuid, 'acc-uuid-1');
    assert.equal(doc.organization_uuid, 'org-uuid-1');
    const exp = Date.parse(doc.expired) - Date.parse(doc.last_refresh);
    assert.equal(exp, 28800 * 1000, text);
    assert.match(doc.expired, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

    // The proxy loads the file: its models are listed and a request goes
    // upstream with the new token.
    const proxy = await startProxy({ apiKeys: ['sk-client'], extra: { 'auth-dir': s.authDir, 'oauth-endpoints': endpoints() } });
    try {
      const models = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: 'Bearer sk-client' } })).json();
      const ids = models.data.map((m) => m.id);
      assert.ok(ids.some((id) => /^claude-/.test(id)), ids.join(','));
      const res = await fetch(`${proxy.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': 'sk-client', 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
        body: JSON.stringify({ model: ids.find((id) => /^claude-/.test(id)), max_tokens: 16,
          messages: [{ role: 'user', content: 'hi' }] }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(mock.inference.at(-1), `Bearer sk-ant-oat01-ACCESS-${n}`);
    } finally {
      await proxy.stop();
    }
  } finally {
    s.cleanup();
  }
});

test('claude: a pasted code#state on standard input; a running proxy picks the file up', T(), async () => {
  const s = setup();
  const port = await freePort();
  fs.mkdirSync(s.authDir, { mode: 0o700 });
  const proxy = await startProxy({ apiKeys: ['k'], extra: { 'auth-dir': s.authDir, 'oauth-endpoints': endpoints() } });
  const claudeModels = async () => {
    const m = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: 'Bearer k' } })).json();
    return m.data.filter((x) => /^claude-/.test(x.id)).length;
  };
  try {
    assert.equal(await claudeModels(), 0);
    const p = run(['login', 'claude', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'claude', port);
    await p.waitFor(/paste the URL/);
    p.write('not a code\n');
    await p.waitFor(/not a redirect URL or code#state/);
    p.write(`${mock.issue(a.challenge, a.redirect, a.state)}#${a.state}\n`);
    const r = await p.done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.equal(readCred(s.authDir, 'claude-me@example.com.json').mode, 0o600);
    noSecrets(r);
    // the proxy's auth-dir watcher sees the new file: no restart
    while (await claudeModels() === 0) await new Promise((res) => setTimeout(res, 100));
  } finally {
    await proxy.stop();
    s.cleanup();
  }
});

test('codex: a pasted redirect URL (CLIProxyAPI\'s -codex-login -no-browser -oauth-callback-port)', T(), async () => {
  const s = setup();
  const port = await freePort();
  try {
    const p = run(['-codex-login', '-no-browser', '-oauth-callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'codex', port);
    await p.waitFor(/paste the URL/);
    const code = mock.issue(a.challenge, a.redirect, a.state);
    p.write(`${a.redirect}?code=${encodeURIComponent(code)}&scope=openid&state=${encodeURIComponent(a.state)}\n`);
    const r = await p.done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    const { mode, doc } = readCred(s.authDir, 'codex-dev@example.com-plus.json');
    assert.equal(mode, 0o600);
    assert.deepEqual(Object.keys(doc),
      ['id_token', 'access_token', 'refresh_token', 'account_id', 'last_refresh', 'email', 'type', 'expired']);
    assert.equal(doc.type, 'codex');
    assert.equal(doc.account_id, 'acct-42');
    assert.equal(doc.email, 'dev@example.com');
    assert.ok(r.out.includes(`Saved ${path.join(s.authDir, 'codex-dev@example.com-plus.json')} (dev@example.com)`));
    noSecrets(r);
    const proxy = await startProxy({ apiKeys: ['k'], extra: { 'auth-dir': s.authDir, 'oauth-endpoints': endpoints() } });
    try {
      const models = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: 'Bearer k' } })).json();
      assert.ok(models.data.length > 0, 'the codex account serves models');
    } finally {
      await proxy.stop();
    }
  } finally {
    s.cleanup();
  }
});

// A stand-in for xdg-open that plays the user and the browser: it takes the
// authorize URL, has the mock issue a code for it, and follows the redirect
// to the callback server, as a browser would after the user approves.
function fakeBrowser(dir) {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  const script = `#!/usr/bin/env node
const u = new URL(process.argv[2]);
const q = u.searchParams;
fs_append(process.argv[2]);
const issue = new URL('${mock.url}/issue');
for (const k of ['state', 'redirect_uri']) issue.searchParams.set(k, q.get(k));
issue.searchParams.set('challenge', q.get('code_challenge'));
fetch(issue).then((r) => r.json()).then(({ code }) => {
  const cb = new URL(q.get('redirect_uri'));
  cb.hostname = '127.0.0.1';
  cb.searchParams.set('code', code);
  cb.searchParams.set('state', q.get('state'));
  return fetch(cb);
}).then((r) => r.text()).then((t) => fs_append(t)).catch((e) => { fs_append(String(e)); process.exit(1); });
function fs_append(s) { require('fs').appendFileSync(${JSON.stringify(path.join(dir, 'browser.log'))}, s + '\\n'); }
`;
  fs.writeFileSync(path.join(bin, 'xdg-open'), script.replace('#!/usr/bin/env node', `#!${process.execPath}`), { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'open'), fs.readFileSync(path.join(bin, 'xdg-open')), { mode: 0o755 });
  return { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` }, log: path.join(dir, 'browser.log') };
}

test('the browser is opened with the URL, and its redirect completes the login', T(), async () => {
  const s = setup();
  const port = await freePort();
  const browser = fakeBrowser(s.dir);
  try {
    const p = run(['login', 'codex', '--callback-port', String(port), '-config', s.configPath], { env: browser.env });
    const a = await authorizeUrl(p, 'codex', port);
    const r = await p.done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Opening the browser/);
    // the opener is detached: it may write its log after the command ended
    let log = '';
    while (!/Login successful|Error/.test(log)) {
      await new Promise((res) => setTimeout(res, 50));
      log = fs.existsSync(browser.log) ? fs.readFileSync(browser.log, 'utf8') : '';
    }
    assert.ok(log.includes(`state=${a.state}`), 'the opener got the authorize URL');
    assert.match(log, /Login successful.*Saved codex-dev@example\.com-plus\.json/s);
    assert.equal(readCred(s.authDir, 'codex-dev@example.com-plus.json').mode, 0o600);

    // no opener on PATH: said so, and the URL is still there to copy
    const q = run(['login', 'claude', '--callback-port', String(port), '--timeout', '1', '-config', s.configPath],
      { env: { ...process.env, PATH: path.join(s.dir, 'empty') } });
    const r2 = await q.done;
    assert.equal(r2.code, 1);
    assert.match(r2.out, /Could not open a browser \(xdg-open: .+\): open the URL above yourself\./);
    assert.match(r2.out, /^ {2}https:\/\/claude\.example\/oauth\/authorize\?/m);
  } finally {
    s.cleanup();
  }
});

test('a callback with the wrong state is refused, and nothing is written', T(), async () => {
  const s = setup();
  const port = await freePort();
  try {
    const p = run(['login', 'claude', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'claude', port);
    await p.waitFor(/Waiting for the browser/);
    const page = await browse(a.redirect, { code: mock.issue(a.challenge, a.redirect, a.state), state: 'forged-state' });
    assert.equal(page.status, 400);
    assert.match(page.text, /Login failed.*state mismatch/s);
    const r = await p.done;
    assert.equal(r.code, 1);
    assert.match(r.err, /^cliproxy login: state mismatch: .*refused$/m);
    assert.doesNotMatch(r.out, /Exchanging/);
    assert.ok(!fs.existsSync(s.authDir) || fs.readdirSync(s.authDir).filter((f) => f.endsWith('.json')).length === 0);
  } finally {
    s.cleanup();
  }
});

test('access denied in the browser', T(), async () => {
  const s = setup();
  const port = await freePort();
  try {
    const p = run(['login', 'codex', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'codex', port);
    await p.waitFor(/Waiting for the browser/);
    const other = await browse(a.redirect.replace('/auth/callback', '/favicon.ico'), {});
    assert.equal(other.status, 404); // not the callback: ignored, still waiting
    if (await hasIPv6Loopback()) { // "localhost" may be ::1 first: served there too
      const v6 = await fetch(`http://[::1]:${port}/favicon.ico`);
      assert.equal(v6.status, 404);
    }
    // a web page reaching loopback by DNS rebinding has another Host: refused, ignored
    const rebound = await new Promise((resolve, reject) => {
      const u = new URL(a.redirect);
      http.get({ host: '127.0.0.1', port, path: `${u.pathname}?error=access_denied&state=${a.state}`,
        headers: { Host: `evil.example:${port}` } }, (res) => { res.resume(); resolve(res.statusCode); }).on('error', reject);
    });
    assert.equal(rebound, 403);
    const page = await browse(a.redirect, { error: 'access_denied', error_description: 'The user said no', state: a.state });
    assert.equal(page.status, 400);
    assert.match(page.text, /access denied/);
    const r = await p.done;
    assert.equal(r.code, 1);
    assert.match(r.err, /^cliproxy login: access denied: .*$/m);
  } finally {
    s.cleanup();
  }
});

test('the token endpoint\'s error is shown', T(), async () => {
  const s = setup();
  const port = await freePort();
  mock.tokenError = { status: 400, body: { error: 'invalid_grant', error_description: 'The authorization code has expired' } };
  try {
    const p = run(['login', 'claude', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const a = await authorizeUrl(p, 'claude', port);
    await p.waitFor(/Waiting for the browser/);
    const page = await browse(a.redirect, { code: mock.issue(a.challenge, a.redirect, a.state), state: a.state });
    assert.equal(page.status, 502);
    assert.match(page.text, /Login failed.*The authorization code has expired/s);
    const r = await p.done;
    assert.equal(r.code, 1);
    assert.match(r.err, /^cliproxy login: the token exchange failed: token endpoint answered 400: invalid_grant \(The authorization code has expired\)$/m);
  } finally {
    mock.tokenError = null;
    s.cleanup();
  }
});

test('a port in use, a network error and a timeout each end with one line and exit 1', T(), async () => {
  const s = setup();
  const port = await freePort();
  const busy = net.createServer();
  await new Promise((r) => busy.listen(port, '127.0.0.1', r));
  try {
    let r = await run(['login', 'claude', '--no-browser', '--callback-port', String(port), '-config', s.configPath]).done;
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^cliproxy login: port ${port} is in use .*--callback-port`, 'm'));

    // the token URL points at a closed port
    const closed = await freePort();
    const cfg2 = path.join(s.dir, 'closed.yaml');
    fs.writeFileSync(cfg2, fs.readFileSync(s.configPath, 'utf8').replace(`${mock.url}/claude/token`, `http://127.0.0.1:${closed}/token`));
    const port2 = await freePort();
    const p = run(['login', 'claude', '--no-browser', '--callback-port', String(port2), '-config', cfg2]);
    const a = await authorizeUrl(p, 'claude', port2);
    await p.waitFor(/paste the URL/);
    p.write(`code-x#${a.state}\n`);
    r = await p.done;
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^cliproxy login: network error: http://127\\.0\\.0\\.1:${closed}/token: .+$`, 'm'));

    r = await run(['login', 'codex', '--no-browser', '--callback-port', String(port2), '--timeout', '1',
      '-config', s.configPath]).done;
    assert.equal(r.code, 1);
    assert.match(r.err, /^cliproxy login: timed out after 1 s waiting for the browser or a pasted code/m);
  } finally {
    busy.close();
    s.cleanup();
  }
});

test('codex device flow: pending, slow_down, then approved', T(90000), async () => {
  const s = setup();
  mock.device = { interval: '1', steps: ['pending404', 'pending403', 'slow_down', 'ok'], polls: [] };
  try {
    const p = run(['login', 'codex', '--device', '--no-browser', '-config', s.configPath], { stdin: 'ignore' });
    await p.waitFor(/Open https:\/\/auth\.openai\.com\/codex\/device and enter the code ABCD-1234/);
    await p.waitFor(/polling every 1 s/);
    const r = await p.done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /slow down: polling every 6 s/);
    const polls = mock.device.polls;
    assert.equal(polls.length, 4);
    // after slow_down the next poll waits the longer interval (a timer never fires early)
    assert.ok(polls[3] - polls[2] >= 5900, `gap ${polls[3] - polls[2]} ms`);
    const { mode, doc } = readCred(s.authDir, 'codex-dev@example.com-plus.json');
    assert.equal(mode, 0o600);
    assert.equal(doc.type, 'codex');
    assert.equal(doc.codex_login_mode, 'device');
    assert.equal(mock.exchanges.at(-1).body.redirect_uri, DEVICE_REDIRECT);
    noSecrets(r);
  } finally {
    mock.device = null;
    s.cleanup();
  }
});

test('codex device flow: a dropped connection while polling is retried, four in a row end the login', T(60000), async () => {
  const s = setup();
  mock.device = { interval: 1, steps: ['pending403', 'reset', 'reset', 'ok'], polls: [] };
  try {
    let r = await run(['login', 'codex', '--device', '--no-browser', '-config', s.configPath], { stdin: 'ignore' }).done;
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Polling failed \(network error: .+\); trying again in 1 s/);
    assert.equal(readCred(s.authDir, 'codex-dev@example.com-plus.json').mode, 0o600);

    mock.device = { interval: 1, steps: ['reset'], polls: [] };
    r = await run(['login', 'codex', '--device', '--no-browser', '-config', s.configPath], { stdin: 'ignore' }).done;
    assert.equal(r.code, 1);
    assert.equal(r.out.match(/Polling failed/g).length, 3);
    assert.match(r.err, /^cliproxy login: network error: http:\/\/127\.0\.0\.1:\d+\/codex\/deviceauth\/token: .+$/m);
    noSecrets(r);
  } finally {
    mock.device = null;
    s.cleanup();
  }
});

test('codex device flow: the code expires (CLIProxyAPI\'s -codex-device-login)', T(), async () => {
  const s = setup();
  mock.device = { interval: 1, expires_in: 3, steps: ['pending403'], polls: [] };
  try {
    const r = await run(['-codex-device-login', '-no-browser', '-config', s.configPath], { stdin: 'ignore' }).done;
    assert.equal(r.code, 1);
    assert.match(r.err, /^cliproxy login: the device code expired after 3 s without an approval/m);
    assert.ok(mock.device.polls.length >= 1);
  } finally {
    mock.device = null;
    s.cleanup();
  }
});

test('bad command lines: exit 2 with a hint', T(), async () => {
  let r = await run(['login'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /which account\?/);
  r = await run(['login', 'claude', '--device'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /--device is for codex only/);
  r = await run(['login', 'claude', '--cookie'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /--cookie is for iflow only/);
  r = await run(['login', 'codex', '--project-id', 'p1'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /--project-id is for gemini only/);
  r = await run(['login', 'claude', '--callback-port', '99999'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /bad port/);
  r = await run(['-claude-login', '-oauth-callback-port=0'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /bad port '0'/);
  r = await run(['login', 'codex', '--timeout=soon'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /bad timeout 'soon'/);
  r = await run(['login', 'codex', '--timeout'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /--timeout needs a value/);
  r = await run(['login', 'nosuch'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 2);
  assert.match(r.err, /unknown argument 'nosuch'/);
  r = await run(['login', 'claude', '-config', '/nonexistent/config.yaml'], { stdin: 'ignore' }).done;
  assert.equal(r.code, 1);
  assert.match(r.err, /config file '\/nonexistent\/config\.yaml' not found/);
});
