// Issue 13, OAuth starters over the management API (fact sheet §1.4): start
// a login, play the browser against a mock OAuth server, follow
// get-auth-status to the saved credential, and the new account serves a
// request. The mock checks the PKCE verifier, client id, redirect URI and
// state as a real server would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';
import { mgmtCall, sendJson, bodyServer } from './lib/mgmt.mjs';

const SECRET = 'oauth-mgmt-secret-5150';
const CLIENT = 'sk-oauth-mgmt-client';
const b64url = (buf) => Buffer.from(buf).toString('base64url');
const jwt = (claims) => `${b64url('{"alg":"none"}')}.${b64url(JSON.stringify(claims))}.sig`;
const CLIENT_ID = { claude: '9d1c250a-e61b-44d9-88ed-5944d1962f5e', codex: 'app_EMoamEEZ73f0CkXaXp7hrann' };

const mock = { grants: new Map(), failures: [], inference: [], seq: 0 };
const send = sendJson;
function refuse(res, why) {
  mock.failures.push(why);
  send(res, 400, { error: 'invalid_request', error_description: `mock: ${why}` });
}
// The user approved in the browser: the server issues a code bound to the
// challenge, redirect URI and state of the authorize URL.
function approve(authUrl) {
  const q = new URL(authUrl).searchParams;
  const code = `code-${++mock.seq}-${crypto.randomBytes(6).toString('hex')}`;
  mock.grants.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri'), state: q.get('state'),
    client_id: q.get('client_id') });
  return code;
}
function onToken(provider, raw, res) {
  const body = provider === 'claude' ? JSON.parse(raw) : Object.fromEntries(new URLSearchParams(raw));
  const g = mock.grants.get(body.code);
  if (!g) return refuse(res, 'unknown code');
  mock.grants.delete(body.code);
  if (body.client_id !== CLIENT_ID[provider] || g.client_id !== CLIENT_ID[provider]) return refuse(res, 'client_id');
  if (body.redirect_uri !== g.redirect_uri) return refuse(res, 'redirect_uri');
  if (b64url(crypto.createHash('sha256').update(body.code_verifier || '').digest()) !== g.challenge) return refuse(res, 'PKCE');
  if (provider === 'claude' && body.state !== g.state) return refuse(res, 'state');
  if (provider === 'claude') {
    return send(res, 200, { token_type: 'Bearer', access_token: 'sk-ant-oat01-MGMT-ACCESS', refresh_token: 'sk-ant-ort01-MGMT-REFRESH',
      expires_in: 28800, account: { uuid: 'acc-1', email_address: 'web@example.com' }, organization: { uuid: 'org-1', name: 'Org' } });
  }
  return send(res, 200, { access_token: 'codex-MGMT-ACCESS', refresh_token: 'codex-MGMT-REFRESH', expires_in: 864000,
    id_token: jwt({ email: 'webdev@example.com', 'https://api.openai.com/auth': { chatgpt_account_id: 'acct-7', chatgpt_plan_type: 'plus' } }) });
}

let server, mockUrl, proxy, authDir, tmp, startedAt;

before(async () => {
  server = bodyServer((req, res, raw) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (req.method === 'POST' && p === '/claude/token') return onToken('claude', raw, res);
    if (req.method === 'POST' && p === '/codex/token') return onToken('codex', raw, res);
    if (req.method === 'POST' && p === '/v1/messages') {
      mock.inference.push(req.headers.authorization);
      return send(res, 200, { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-sonnet-4-5',
        content: [{ type: 'text', text: 'hi from the mock' }], stop_reason: 'end_turn', stop_sequence: null,
        usage: { input_tokens: 3, output_tokens: 4 } });
    }
    return send(res, 404, { error: 'not_found' });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${server.address().port}`;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-mgmt-oauth-'));
  authDir = path.join(tmp, 'auths');
  fs.mkdirSync(authDir, { mode: 0o700 });
  startedAt = Date.now() / 1000;
  proxy = await startProxy({
    apiKeys: [CLIENT],
    extra: {
      'auth-dir': authDir,
      'remote-management': { 'secret-key': SECRET },
      metrics: { enabled: true },
      'oauth-endpoints': {
        claude: { 'auth-url': 'https://claude.example/oauth/authorize', 'token-url': `${mockUrl}/claude/token`, 'api-base-url': mockUrl },
        codex: { 'auth-url': 'https://auth.example/oauth/authorize', 'token-url': `${mockUrl}/codex/token`, 'api-base-url': mockUrl },
      },
    },
  });
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
  await new Promise((r) => server.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});

const call = (p, { key = SECRET, ...o } = {}) => mgmtCall(proxy.url, p, { key, ...o });

test('anthropic: start, the browser approves, the callback, status ok, the account serves', async () => {
  assert.equal((await call('/anthropic-auth-url', { key: null })).status, 401);
  // (is_webui and its forwarder: management_webui.test.mjs)
  const s = await call('/anthropic-auth-url');
  assert.equal(s.status, 200, s.text);
  assert.deepEqual(Object.keys(s.json), ['status', 'url', 'state']);
  assert.equal(s.json.status, 'ok');
  const u = new URL(s.json.url);
  assert.equal(u.origin + u.pathname, 'https://claude.example/oauth/authorize');
  assert.equal(u.searchParams.get('state'), s.json.state);
  assert.equal(u.searchParams.get('redirect_uri'), 'http://localhost:54545/callback');
  assert.equal(u.searchParams.get('code_challenge_method'), 'S256');
  assert.deepEqual((await call(`/get-auth-status?state=${encodeURIComponent(s.json.state)}`)).json, { status: 'wait' });

  const code = approve(s.json.url);
  // a forged state is refused and changes nothing
  const forged = await fetch(`${proxy.url}/anthropic/callback?code=${code}&state=not-the-state`);
  assert.equal(forged.status, 400);
  assert.deepEqual((await call(`/get-auth-status?state=${encodeURIComponent(s.json.state)}`)).json, { status: 'wait' });
  // the redirect reaches the main port's callback (as the forwarder sends it)
  const cb = await fetch(`${proxy.url}/anthropic/callback?code=${code}&state=${encodeURIComponent(s.json.state)}`);
  const page = await cb.text();
  assert.equal(cb.status, 200, `${page}\nmock: ${mock.failures.join('; ')}`);
  assert.match(page, /Login successful/);
  const st = await call(`/get-auth-status?state=${encodeURIComponent(s.json.state)}`);
  assert.deepEqual(st.json, { status: 'ok', file: 'claude-web@example.com.json' });

  const file = path.join(authDir, 'claude-web@example.com.json');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.equal(doc.type, 'claude');
  assert.equal(doc.access_token, 'sk-ant-oat01-MGMT-ACCESS');
  assert.equal(doc.email, 'web@example.com');
  const files = (await call('/auth-files')).json.files.map((f) => f.name);
  assert.ok(files.includes('claude-web@example.com.json'), files.join(','));

  const ids = await until(async () => {
    const m = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: `Bearer ${CLIENT}` } })).json();
    const x = m.data.map((e) => e.id).filter((id) => /^claude-/.test(id));
    return x.length > 0 && x;
  }, 'claude models from the new account');
  const res = await fetch(`${proxy.url}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': CLIENT, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: ids[0], max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(mock.inference.at(-1), 'Bearer sk-ant-oat01-MGMT-ACCESS');
  // the same redirect again: already done, nothing exchanged twice
  const again = await fetch(`${proxy.url}/anthropic/callback?code=${code}&state=${encodeURIComponent(s.json.state)}`);
  assert.equal(again.status, 200);
  await again.text();
});

test('codex: a pasted redirect URL through POST /oauth-callback', async () => {
  const s = await call('/codex-auth-url');
  assert.equal(s.status, 200, s.text);
  const u = new URL(s.json.url);
  assert.equal(u.searchParams.get('redirect_uri'), 'http://localhost:1455/auth/callback');
  const code = approve(s.json.url);
  const redirect = `http://localhost:1455/auth/callback?code=${code}&state=${encodeURIComponent(s.json.state)}`;
  const wrong = await call('/oauth-callback', { method: 'POST', body: { provider: 'anthropic', redirect_url: redirect } });
  assert.equal(wrong.status, 400);
  const r = await call('/oauth-callback', { method: 'POST', body: { provider: 'codex', redirect_url: redirect } });
  assert.equal(r.status, 200, `${r.text}\nmock: ${mock.failures.join('; ')}`);
  const st = await call(`/get-auth-status?state=${encodeURIComponent(s.json.state)}`);
  assert.deepEqual(st.json, { status: 'ok', file: 'codex-webdev@example.com-plus.json' });
  const doc = JSON.parse(fs.readFileSync(path.join(authDir, 'codex-webdev@example.com-plus.json'), 'utf8'));
  assert.equal(doc.access_token, 'codex-MGMT-ACCESS');
  assert.equal(doc.account_id, 'acct-7');
});

test('errors: declined in the browser, a bad code, an unknown state', async () => {
  const a = await call('/anthropic-auth-url');
  const d = await fetch(`${proxy.url}/anthropic/callback?error=access_denied&state=${encodeURIComponent(a.json.state)}`);
  assert.equal(d.status, 400);
  assert.match(await d.text(), /access denied/);
  const sa = (await call(`/get-auth-status?state=${encodeURIComponent(a.json.state)}`)).json;
  assert.equal(sa.status, 'error');
  assert.match(sa.error, /access denied/);

  const b = await call('/codex-auth-url');
  const r = await call('/oauth-callback', { method: 'POST', body: { provider: 'codex', code: 'made-up', state: b.json.state } });
  assert.equal(r.status, 400);
  const sb = (await call(`/get-auth-status?state=${encodeURIComponent(b.json.state)}`)).json;
  assert.equal(sb.status, 'error');
  assert.match(sb.error, /token exchange failed/);

  const u = (await call('/get-auth-status?state=nope')).json;
  assert.equal(u.status, 'error');
  const cb = await fetch(`${proxy.url}/codex/callback?code=x&state=nope`);
  assert.equal(cb.status, 400);
  await cb.text();
  assert.ok(!proxy.stderr().includes('MGMT-ACCESS') && !proxy.stderr().includes('MGMT-REFRESH'), 'no token in the log');
});

test('GET /latest-version answers cliproxy\'s own version without asking the network', async () => {
  const r = await fetch(`${proxy.url}/v0/management/latest-version`, { headers: { 'X-Management-Key': SECRET } });
  const j = await r.json();
  assert.equal(r.status, 200);
  assert.equal(j['latest-version'], r.headers.get('x-cpa-version'));
  assert.equal(j['current-version'], j['latest-version']);
  assert.equal(j['update-available'], false);
  assert.match(j.message, /no update information/);
});

test('/metrics: process_start_time_seconds and the refresh-failing gauge of the new accounts', async () => {
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  const start = Number(text.match(/^process_start_time_seconds (\S+)$/m)?.[1]);
  assert.ok(start >= Math.floor(startedAt) - 1 && start <= Date.now() / 1000, `${start} vs ${startedAt}`);
  assert.match(text, /^# TYPE cliproxy_account_refresh_failing gauge$/m);
  assert.match(text, /^cliproxy_account_refresh_failing\{account="claude-web@example.com.json",provider="claude"\} 0$/m);
});
