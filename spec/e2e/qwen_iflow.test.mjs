// Issue 11, Qwen Code and iFlow: the logins (Qwen's device flow with PKCE,
// iFlow's code flow on its callback and its cookie login) against a mock
// OAuth server, and the accounts served to every client format (OpenAI SDK
// chat and responses, Anthropic SDK, @google/genai) against one upstream
// mock: Qwen's resource_url base and headers, its 60-a-minute limiter,
// iFlow's API key with the HMAC signature headers (checked here with node's
// crypto), refresh of both types (iFlow's looks the API key up again).
//
//   node --test qwen_iflow.test.mjs
import { runCli } from './lib/cli.mjs';
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startMock } from './lib/mock_upstream.mjs';
import { BIN, SCRATCH, freePort, startProxy, toYaml } from './lib/proxy.mjs';

const T = { timeout: 60000 };
const b64url = (buf) => Buffer.from(buf).toString('base64url');
const QWEN_CLIENT = 'f0304373b74a44d2b584a3fb70ca9e56';
const IFLOW_CLIENT = '10009311001';
const IFLOW_SECRET = '4Z3YjXycVsQvyGF1etiNlIBB4RsqSDtW';
const COOKIE = 'BXAuth=cookie-SECRET-value; other=1';

// ---- the mock OAuth server --------------------------------------------------

const oauth = {
  server: null, url: '', failures: [], seq: 0,
  qwen: { steps: [], polls: [], challenge: null, refreshes: 0 },
  iflow: { codes: new Map(), exchanges: [], refreshes: 0, keyCalls: [] },
};

function send(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}
function refuse(res, why) {
  oauth.failures.push(why);
  send(res, 400, { error: 'invalid_request', error_description: `mock: ${why}` });
}

function onQwen(p, req, raw, res) {
  const q = new URLSearchParams(raw);
  if (req.headers['content-type'] !== 'application/x-www-form-urlencoded') return refuse(res, 'qwen: not a form');
  if (q.get('client_id') !== QWEN_CLIENT) return refuse(res, 'qwen client_id');
  if (p === '/qwen/device/code') {
    if (q.get('scope') !== 'openid profile email model.completion') return refuse(res, 'qwen scope');
    if (q.get('code_challenge_method') !== 'S256') return refuse(res, 'qwen challenge method');
    oauth.qwen.challenge = q.get('code_challenge');
    return send(res, 200, { device_code: 'qdev-1', user_code: 'QW-1234', verification_uri: 'https://chat.qwen.example/device',
      verification_uri_complete: 'https://chat.qwen.example/device?user_code=QW-1234', expires_in: oauth.qwen.expiresIn || 300,
      interval: 1 });
  }
  if (q.get('grant_type') === 'refresh_token') {
    if (q.get('refresh_token') !== 'qrt-old') return send(res, 400, { error: 'invalid_grant' });
    oauth.qwen.refreshes++;
    return send(res, 200, { access_token: 'qat-REFRESHED', refresh_token: 'qrt-new', expires_in: 3600,
      token_type: 'Bearer', resource_url: oauth.qwen.resource });
  }
  if (q.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:device_code') return refuse(res, 'qwen grant');
  if (q.get('device_code') !== 'qdev-1') return refuse(res, 'qwen device_code');
  const challenge = b64url(crypto.createHash('sha256').update(q.get('code_verifier') || '').digest());
  if (challenge !== oauth.qwen.challenge) return refuse(res, 'qwen PKCE verifier does not match');
  oauth.qwen.polls.push(Date.now());
  const step = oauth.qwen.steps.length > 1 ? oauth.qwen.steps.shift() : oauth.qwen.steps[0];
  if (step === 'pending') return send(res, 400, { error: 'authorization_pending' });
  if (step === 'slow_down') return send(res, 429, { error: 'slow_down' });
  if (step === 'expired') return send(res, 400, { error: 'expired_token' });
  return send(res, 200, { access_token: 'qat-ACCESS-1', refresh_token: 'qrt-REFRESH-1', expires_in: 21600,
    token_type: 'Bearer', resource_url: 'portal.qwen.example' });
}

function onIflow(p, req, raw, res, u) {
  if (p === '/iflow/token') {
    const q = new URLSearchParams(raw);
    const basic = 'Basic ' + Buffer.from(`${IFLOW_CLIENT}:${IFLOW_SECRET}`).toString('base64');
    if (req.headers.authorization !== basic) return refuse(res, 'iflow basic auth');
    if (q.get('grant_type') === 'refresh_token') {
      if (q.get('refresh_token') !== 'irt-old') return send(res, 400, { error: 'invalid_grant' });
      oauth.iflow.refreshes++;
      return send(res, 200, { access_token: 'iat-REFRESHED', refresh_token: 'irt-new', expires_in: 172800,
        token_type: 'bearer', scope: 'read' });
    }
    const keys = [...q.keys()].join(',');
    if (keys !== 'grant_type,code,redirect_uri,client_id,client_secret') return refuse(res, `iflow keys ${keys}`);
    const g = oauth.iflow.codes.get(q.get('code'));
    if (!g || g !== q.get('redirect_uri')) return refuse(res, 'iflow code or redirect_uri');
    if (q.get('client_secret') !== IFLOW_SECRET) return refuse(res, 'iflow secret');
    oauth.iflow.codes.delete(q.get('code'));
    oauth.iflow.exchanges.push(Object.fromEntries(q));
    return send(res, 200, { access_token: 'iat-ACCESS-1', refresh_token: 'irt-REFRESH-1', expires_in: 172800,
      token_type: 'bearer', scope: 'read' });
  }
  if (p === '/iflow/getUserInfo') {
    const at = u.searchParams.get('accessToken');
    if (at === 'iat-ACCESS-1') return send(res, 200, { success: true, data: { apiKey: 'sk-iflow-LOGIN', email: 'i@example.com' } });
    if (at === 'iat-REFRESHED') return send(res, 200, { success: true, data: { apiKey: 'sk-iflow-ROTATED', phone: '138' } });
    return send(res, 401, { success: false, message: 'bad token' });
  }
  if (p === '/iflow/apikey') {
    oauth.iflow.keyCalls.push({ method: req.method, cookie: req.headers.cookie, body: raw });
    if (req.headers.cookie !== COOKIE) return send(res, 401, { success: false, message: 'not logged in' });
    if (req.method === 'GET') return send(res, 200, { success: true, data: { name: 'my-key', apiKeyMask: 'sk-***' } });
    if (JSON.parse(raw || '{}').name !== 'my-key') return refuse(res, 'iflow key name');
    return send(res, 200, { success: true, data: { name: 'my-key', apiKey: 'sk-iflow-COOKIE', expireTime: '2027-01-01 00:00' } });
  }
  return send(res, 404, { error: 'not_found' });
}

let mock, dir;

before(async () => {
  oauth.server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => { raw += c; });
    req.on('end', () => {
      const u = new URL(req.url, 'http://x');
      if (u.pathname.startsWith('/qwen/')) return onQwen(u.pathname, req, raw, res);
      if (u.pathname.startsWith('/iflow/')) return onIflow(u.pathname, req, raw, res, u);
      return send(res, 404, { error: 'not_found' });
    });
  });
  await new Promise((r) => oauth.server.listen(0, '127.0.0.1', r));
  oauth.url = `http://127.0.0.1:${oauth.server.address().port}`;
  mock = await startMock();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-qwen-'));
});

after(async () => {
  await new Promise((r) => oauth.server.close(r));
  await mock?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const endpoints = () => ({
  qwen: { 'device-url': `${oauth.url}/qwen/device/code`, 'device-token-url': `${oauth.url}/qwen/token`,
    'token-url': `${oauth.url}/qwen/token` },
  iflow: { 'auth-url': 'https://iflow.example/oauth', 'token-url': `${oauth.url}/iflow/token`,
    'userinfo-url': `${oauth.url}/iflow/getUserInfo`, 'api-key-url': `${oauth.url}/iflow/apikey`,
    'api-base-url': `${mock.url}/iflow/v1` },
});

function loginSetup() {
  const d = fs.mkdtempSync(path.join(dir, 'login-'));
  const authDir = path.join(d, 'auths');
  const configPath = path.join(d, 'config.yaml');
  fs.writeFileSync(configPath, `host: 127.0.0.1\nport: 1\n${toYaml({ 'auth-dir': authDir, 'oauth-endpoints': endpoints() })}\n`);
  return { authDir, configPath };
}


const run = (args) => runCli(args);

const readCred = (authDir, name) => {
  const file = path.join(authDir, name);
  return { mode: fs.statSync(file).mode & 0o777, doc: JSON.parse(fs.readFileSync(file, 'utf8')) };
};
const why = (r) => `${r.out}\n${r.err}\nmock: ${oauth.failures.join('; ')}`;

// ---- logins -------------------------------------------------------------------

describe('cliproxy login qwen', () => {
  test('device flow: pending, slow_down, then approved; the alias names the file', T, async () => {
    const s = loginSetup();
    oauth.qwen.steps = ['pending', 'slow_down', 'ok'];
    oauth.qwen.polls = [];
    oauth.qwen.expiresIn = 300;
    const p = run(['-qwen-login', '-no-browser', '-config', s.configPath]);
    await p.waitFor(/Open https:\/\/chat\.qwen\.example\/device\?user_code=QW-1234 and enter the code QW-1234/);
    await p.waitFor(/The server asked to slow down: polling every 6 s/);
    await p.waitFor(/Enter an email or alias/);
    p.write('me@qwen.example\n');
    const r = await p.done;
    assert.equal(r.code, 0, why(r));
    assert.equal(oauth.qwen.polls.length, 3);
    const { mode, doc } = readCred(s.authDir, 'qwen-me@qwen.example.json');
    assert.equal(mode, 0o600);
    assert.deepEqual(Object.keys(doc), ['access_token', 'refresh_token', 'last_refresh', 'resource_url', 'email', 'type', 'expired']);
    assert.equal(doc.type, 'qwen');
    assert.equal(doc.access_token, 'qat-ACCESS-1');
    assert.equal(doc.resource_url, 'portal.qwen.example');
    assert.equal(Date.parse(doc.expired) - Date.parse(doc.last_refresh), 21600 * 1000);
    assert.match(r.out, /Saved .*qwen-me@qwen\.example\.json \(me@qwen\.example\)/);
    assert.doesNotMatch(r.out + r.err, /ACCESS|REFRESH/);
  });

  test('device flow: the code expires without an approval', T, async () => {
    const s = loginSetup();
    oauth.qwen.steps = ['pending', 'expired'];
    const r = await run(['login', 'qwen', '--no-browser', '-config', s.configPath]).done;
    assert.equal(r.code, 1, why(r));
    assert.match(r.err, /^cliproxy login: the device code expired without an approval: run the login again$/m);
    assert.ok(!fs.existsSync(s.authDir) || fs.readdirSync(s.authDir).filter((f) => f.endsWith('.json')).length === 0);
  });
});

describe('cliproxy login iflow', () => {
  test('code flow on the callback, then the API-key lookup', T, async () => {
    const s = loginSetup();
    const port = await freePort();
    const p = run(['login', 'iflow', '--no-browser', '--callback-port', String(port), '-config', s.configPath]);
    const m = await p.waitFor(/^ {2}(https:\/\/iflow\.example\/oauth\?\S+)$/m);
    const q = new URL(m[1]).searchParams;
    assert.equal(q.get('loginMethod'), 'phone');
    assert.equal(q.get('type'), 'phone');
    assert.equal(q.get('client_id'), IFLOW_CLIENT);
    const redirect = q.get('redirect');
    assert.equal(redirect, `http://localhost:${port}/oauth2callback`);
    await p.waitFor(/Waiting for the browser/);
    oauth.iflow.codes.set('icode-1', redirect);
    const cb = new URL(redirect);
    cb.hostname = '127.0.0.1';
    cb.searchParams.set('code', 'icode-1');
    cb.searchParams.set('state', q.get('state'));
    const page = await fetch(cb);
    assert.equal(page.status, 200, await page.clone().text());
    const r = await p.done;
    assert.equal(r.code, 0, why(r));
    assert.match(r.out, /Looking up the API key at http:\/\/127\.0\.0\.1:\d+\/iflow\/getUserInfo/);
    const name = fs.readdirSync(s.authDir).find((f) => /^iflow-i@example\.com-\d+\.json$/.test(f));
    assert.ok(name, fs.readdirSync(s.authDir).join());
    const { mode, doc } = readCred(s.authDir, name);
    assert.equal(mode, 0o600);
    assert.deepEqual(Object.keys(doc), ['access_token', 'refresh_token', 'last_refresh', 'expired', 'api_key', 'email',
      'token_type', 'scope', 'cookie', 'type']);
    assert.equal(doc.api_key, 'sk-iflow-LOGIN');
    assert.equal(doc.access_token, 'iat-ACCESS-1');
    assert.equal(doc.email, 'i@example.com');
    assert.equal(doc.scope, 'read');
    assert.doesNotMatch(r.out + r.err, /ACCESS|REFRESH|sk-iflow/);
  });

  test('--cookie: the pasted cookie (never printed), then the key', T, async () => {
    const s = loginSetup();
    oauth.iflow.keyCalls = [];
    const p = run(['-iflow-cookie', '-config', s.configPath]);
    await p.waitFor(/it is not shown or logged/);
    p.write('no cookie here\n');
    await p.waitFor(/That has no BXAuth cookie/);
    p.write(`Cookie: ${COOKIE}\n`);
    const r = await p.done;
    assert.equal(r.code, 0, why(r));
    assert.deepEqual(oauth.iflow.keyCalls.map((c) => c.method), ['GET', 'POST']);
    const { mode, doc } = readCred(s.authDir, 'iflow-my-key.json');
    assert.equal(mode, 0o600);
    assert.equal(doc.api_key, 'sk-iflow-COOKIE');
    assert.equal(doc.cookie, COOKIE);
    assert.equal(doc.email, 'my-key');
    assert.equal(doc.type, 'iflow');
    assert.doesNotMatch(r.out + r.err, /SECRET|sk-iflow/);
  });
});

// On a terminal the pasted cookie is not echoed (script(1) gives the command
// a pty; the same pty echoes another login's paste).
const hasScript = fs.existsSync('/usr/bin/script');
test('--cookie on a terminal: what is typed is not echoed', { ...T, skip: !hasScript && 'no script(1)' }, async () => {
  const s = loginSetup();
  const viaPty = (cmd, line) => new Promise((resolve) => {
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: SCRATCH, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let sent = false;
    child.stdout.on('data', (d) => {
      out += d;
      if (!sent && /not shown or logged:|paste the URL/.test(out)) { sent = true; child.stdin.write(line); }
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 30000);
    child.on('close', () => { clearTimeout(killer); resolve(out); });
  });
  const out = await viaPty(`${BIN} -iflow-cookie -config ${s.configPath}`, `${COOKIE}\n`);
  assert.match(out, /Fetching the API key/, out);
  assert.doesNotMatch(out, /SECRET/, out);
  assert.ok(fs.existsSync(path.join(s.authDir, 'iflow-my-key.json')), out);
  // a free callback port: Claude's own (54545) may be taken by a test running beside this one
  const cb = await freePort();
  const echoed = await viaPty(`${BIN} login claude --no-browser --timeout 2 --callback-port ${cb} -config ${s.configPath}`, 'VISIBLE-PASTE\n');
  assert.match(echoed, /VISIBLE-PASTE/, 'the pty echoes a paste that is not secret');
});

// ---- serving ------------------------------------------------------------------

describe('serving qwen and iflow accounts', () => {
  const CLIENT_KEY = 'sk-client-qi';
  let proxy, oa, an, gg, auths;
  const far = () => new Date(Date.now() + 30 * 86400e3).toISOString();
  const write = (name, doc) => fs.writeFileSync(path.join(auths, name), JSON.stringify(doc), { mode: 0o600 });

  before(async () => {
    auths = path.join(dir, 'serve-auths');
    fs.mkdirSync(auths, { mode: 0o700 });
    write('qwen-a.json', { type: 'qwen', email: 'a', access_token: 'qat-a', refresh_token: 'qrt-a',
      resource_url: `${mock.url}/qwen-a`, expired: far() });
    write('iflow-b.json', { type: 'iflow', email: 'b', access_token: 'iat-b', refresh_token: 'irt-b', api_key: 'sk-iflow-b',
      expired: far() });
    const cfg = { host: '127.0.0.1', 'auth-dir': auths, 'api-keys': [CLIENT_KEY], 'request-retry': 0,
      'max-retry-interval': 0, 'oauth-endpoints': endpoints(), routing: { strategy: 'fill-first' } };
    proxy = await startProxy({ configText: `port: \${PORT}\n${toYaml(cfg)}\n` });
    oa = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 15000 });
    an = new Anthropic({ baseURL: proxy.url, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 15000 });
    gg = new GoogleGenAI({ apiKey: CLIENT_KEY, httpOptions: { baseUrl: proxy.url, timeout: 15000, retryOptions: { attempts: 1 } } });
  });
  after(async () => { await proxy?.stop(); });

  const schema = { type: 'object', properties: { command: { type: 'string' } }, required: ['command'] };
  const CLIENTS = {
    anthropic: async (model, stream) => {
      const req = { model, max_tokens: 100, messages: [{ role: 'user', content: 'list the files' }],
        thinking: { type: 'enabled', budget_tokens: 2048 }, tools: [{ name: 'bash', input_schema: schema }] };
      if (!stream) {
        const m = await an.messages.create(req);
        return { tools: m.content.filter((b) => b.type === 'tool_use').map((b) => b.name),
          thinking: m.content.filter((b) => b.type === 'thinking').map((b) => b.thinking).join(''), usage: m.usage.output_tokens };
      }
      const out = { tools: [], thinking: '', usage: 0 };
      for await (const ev of await an.messages.create({ ...req, stream: true })) {
        if (ev.type === 'content_block_start' && ev.content_block.type === 'tool_use') out.tools.push(ev.content_block.name);
        if (ev.type === 'content_block_delta' && ev.delta.type === 'thinking_delta') out.thinking += ev.delta.thinking;
        if (ev.type === 'message_delta') out.usage = ev.usage.output_tokens;
      }
      return out;
    },
    chat: async (model, stream) => {
      const req = { model, messages: [{ role: 'user', content: 'list the files' }], reasoning_effort: 'high',
        tools: [{ type: 'function', function: { name: 'bash', parameters: schema } }] };
      if (!stream) {
        const c = await oa.chat.completions.create(req);
        const msg = c.choices[0].message;
        return { tools: (msg.tool_calls || []).map((t) => t.function.name), thinking: msg.reasoning_content || '',
          usage: c.usage.completion_tokens };
      }
      const out = { tools: [], thinking: '', usage: 0 };
      for await (const ch of await oa.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } })) {
        const d = ch.choices[0]?.delta || {};
        for (const t of d.tool_calls || []) if (t.function?.name) out.tools.push(t.function.name);
        if (d.reasoning_content) out.thinking += d.reasoning_content;
        if (ch.usage) out.usage = ch.usage.completion_tokens;
      }
      return out;
    },
    responses: async (model, stream) => {
      const req = { model, input: 'list the files', reasoning: { effort: 'high', summary: 'auto' },
        tools: [{ type: 'function', name: 'bash', parameters: schema }] };
      if (!stream) {
        const r = await oa.responses.create(req);
        return { tools: r.output.filter((o) => o.type === 'function_call').map((o) => o.name),
          thinking: r.output.filter((o) => o.type === 'reasoning').flatMap((o) => o.summary || []).map((s) => s.text).join(''),
          usage: r.usage.output_tokens };
      }
      const out = { tools: [], thinking: '', usage: 0 };
      for await (const ev of await oa.responses.create({ ...req, stream: true })) {
        if (ev.type === 'response.output_item.added' && ev.item.type === 'function_call') out.tools.push(ev.item.name);
        if (ev.type === 'response.reasoning_summary_text.delta') out.thinking += ev.delta;
        if (ev.type === 'response.completed') out.usage = ev.response.usage.output_tokens;
      }
      return out;
    },
    gemini: async (model, stream) => {
      const req = { model, contents: [{ role: 'user', parts: [{ text: 'list the files' }] }],
        config: { thinkingConfig: { includeThoughts: true, thinkingBudget: 2048 },
          tools: [{ functionDeclarations: [{ name: 'bash', parameters: schema }] }] } };
      const collect = (r, acc) => {
        for (const p of r.candidates?.[0]?.content?.parts || []) {
          if (p.functionCall) acc.tools.push(p.functionCall.name);
          if (p.thought && p.text) acc.thinking += p.text;
        }
        // Gemini counts thoughts apart from the candidates
        const u = r.usageMetadata;
        if (u?.candidatesTokenCount) acc.usage = u.candidatesTokenCount + (u.thoughtsTokenCount || 0);
        return acc;
      };
      if (!stream) return collect(await gg.models.generateContent(req), { tools: [], thinking: '', usage: 0 });
      const acc = { tools: [], thinking: '', usage: 0 };
      for await (const ch of await gg.models.generateContentStream(req)) collect(ch, acc);
      return acc;
    },
  };

  const last = () => mock.requests[mock.requests.length - 1];

  for (const [client, send] of Object.entries(CLIENTS)) {
    for (const stream of [false, true]) {
      const mode = stream ? 'stream' : 'non-stream';
      test(`qwen, ${client} ${mode}: resource_url base, QwenCode headers, tools and reasoning_content`, T, async () => {
        mock.reply({ thinking: 'let me think', tools: [{ name: 'bash', args: { command: 'ls' } }], usage: { input: 5, output: 7 } });
        const got = await send('coder-model', stream);
        assert.deepEqual(got.tools, ['bash']);
        assert.equal(got.thinking, 'let me think');
        assert.equal(got.usage, 7);
        const r = last();
        assert.equal(r.path, '/qwen-a/v1/chat/completions');
        assert.equal(r.headers.authorization, 'Bearer qat-a');
        assert.equal(r.headers['user-agent'], 'QwenCode/0.14.2 (darwin; arm64)');
        assert.equal(r.headers['x-dashscope-useragent'], 'QwenCode/0.14.2 (darwin; arm64)');
        assert.equal(r.headers['x-dashscope-authtype'], 'qwen-oauth');
        assert.equal(r.headers['x-stainless-runtime'], 'node');
        assert.equal(r.body.model, 'coder-model');
        if (stream) assert.equal(r.body.stream_options.include_usage, true);
      });
      test(`iflow, ${client} ${mode}: the API key and a valid x-iflow-signature`, T, async () => {
        mock.reply({ thinking: 'hmm', tools: [{ name: 'bash', args: { command: 'ls' } }], usage: { input: 5, output: 9 } });
        const got = await send('kimi-k2', stream);
        assert.deepEqual(got.tools, ['bash']);
        assert.equal(got.thinking, 'hmm');
        assert.equal(got.usage, 9);
        const r = last();
        assert.equal(r.path, '/iflow/v1/chat/completions');
        assert.equal(r.headers.authorization, 'Bearer sk-iflow-b');
        assert.equal(r.headers['user-agent'], 'iFlow-Cli');
        const sid = r.headers['session-id'];
        const ts = r.headers['x-iflow-timestamp'];
        assert.match(sid, /^session-[0-9a-f-]{36}$/);
        assert.ok(Math.abs(Number(ts) - Date.now()) < 600000, ts);
        const want = crypto.createHmac('sha256', 'sk-iflow-b').update(`iFlow-Cli:${sid}:${ts}`).digest('hex');
        assert.equal(r.headers['x-iflow-signature'], want);
      });
    }
  }

  test('iflow glm-4.6: thinking as chat_template_kwargs', T, async () => {
    mock.reply({ text: 'ok' });
    await oa.chat.completions.create({ model: 'glm-4.6', reasoning_effort: 'high', messages: [{ role: 'user', content: 'x' }] });
    assert.deepEqual(last().body.chat_template_kwargs, { enable_thinking: true, clear_thinking: false });
    assert.equal(last().body.reasoning_effort, undefined);
  });

  test('the Qwen limiter: the 61st request of a minute goes to the other account, then 429 when both are spent', T, async () => {
    write('qwen-l1.json', { type: 'qwen', email: 'l1', access_token: 'qat-l1', resource_url: `${mock.url}/l1`,
      expired: far(), prefix: 'lim', priority: 5 });
    write('qwen-l2.json', { type: 'qwen', email: 'l2', access_token: 'qat-l2', resource_url: `${mock.url}/l2`,
      expired: far(), prefix: 'lim' });
    mock.reply({ text: 'ok' });
    const ask = () => fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'lim/coder-model', messages: [{ role: 'user', content: 'x' }] }) });
    // the proxy picks the new files up on the next request
    for (;;) {
      const r = await ask();
      if (r.status === 200) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    const before = mock.requests.length;
    for (let i = 1; i < 60; i++) assert.equal((await ask()).status, 200);
    const sent = mock.requests.slice(before);
    assert.equal(sent.filter((r) => r.path === '/l1/v1/chat/completions').length, 59);
    const r61 = await ask();
    assert.equal(r61.status, 200);
    assert.equal(last().path, '/l2/v1/chat/completions');
    assert.equal(last().headers.authorization, 'Bearer qat-l2');
    for (let i = 0; i < 59; i++) assert.equal((await ask()).status, 200);
    const n = mock.requests.length;
    const over = await ask();
    assert.equal(over.status, 429, await over.clone().text());
    assert.ok(Number(over.headers.get('retry-after')) >= 1);
    assert.equal(mock.requests.length, n, 'a limited request never reaches Qwen');
  });
});

// ---- refresh ------------------------------------------------------------------

describe('refresh', () => {
  let proxy, auths;
  before(async () => {
    auths = path.join(dir, 'refresh-auths');
    fs.mkdirSync(auths, { mode: 0o700 });
    const past = new Date(Date.now() - 60e3).toISOString();
    oauth.qwen.resource = `${mock.url}/qwen-r`;
    fs.writeFileSync(path.join(auths, 'qwen-r.json'), JSON.stringify({ type: 'qwen', email: 'r', access_token: 'qat-old',
      refresh_token: 'qrt-old', resource_url: `${mock.url}/qwen-r`, expired: past }), { mode: 0o600 });
    fs.writeFileSync(path.join(auths, 'iflow-r.json'), JSON.stringify({ type: 'iflow', email: 'r', access_token: 'iat-old',
      refresh_token: 'irt-old', api_key: 'sk-iflow-old', expired: past }), { mode: 0o600 });
    const cfg = { host: '127.0.0.1', 'auth-dir': auths, 'api-keys': ['k'], 'oauth-endpoints': endpoints() };
    proxy = await startProxy({ configText: `port: \${PORT}\n${toYaml(cfg)}\n` });
  });
  after(async () => { await proxy?.stop(); });

  const ask = (model) => fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST',
    headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }] }) });

  test('qwen: an expired token is refreshed (new resource_url kept) before it is sent', T, async () => {
    mock.reply({ text: 'ok' });
    const r = await ask('coder-model');
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(mock.requests.at(-1).headers.authorization, 'Bearer qat-REFRESHED');
    const doc = JSON.parse(fs.readFileSync(path.join(auths, 'qwen-r.json'), 'utf8'));
    assert.equal(doc.refresh_token, 'qrt-new');
    assert.equal(doc.resource_url, `${mock.url}/qwen-r`);
    assert.equal(fs.statSync(path.join(auths, 'qwen-r.json')).mode & 0o777, 0o600);
  });

  test('iflow: the refresh looks the API key up again and that key goes upstream', T, async () => {
    mock.reply({ text: 'ok' });
    const r = await ask('kimi-k2');
    assert.equal(r.status, 200, await r.clone().text());
    const h = mock.requests.at(-1).headers;
    assert.equal(h.authorization, 'Bearer sk-iflow-ROTATED');
    const want = crypto.createHmac('sha256', 'sk-iflow-ROTATED')
      .update(`iFlow-Cli:${h['session-id']}:${h['x-iflow-timestamp']}`).digest('hex');
    assert.equal(h['x-iflow-signature'], want);
    const doc = JSON.parse(fs.readFileSync(path.join(auths, 'iflow-r.json'), 'utf8'));
    assert.equal(doc.api_key, 'sk-iflow-ROTATED');
    assert.equal(doc.access_token, 'iat-REFRESHED');
    assert.equal(doc.refresh_token, 'irt-new');
  });
});
