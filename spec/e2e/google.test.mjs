// Issue 11, the Google part: Gemini CLI (`gemini` files) and Antigravity
// (`antigravity` files), logins and upstreams, against one mock on loopback
// that plays Google: the OAuth token endpoint (client secrets, PKCE for
// Gemini, none for Antigravity, the refresh grant), userinfo, the project
// list, Code Assist (loadCodeAssist, onboardUser with an operation that is
// pending first) and the v1internal inference methods, which check the
// {model, project, request} envelope and answer wrapped in {"response"}.
// The official SDKs (@google/genai, Anthropic, OpenAI chat) talk to the real
// binary; what they read is the unwrapped answer.
//
//   node --test google.test.mjs

import { runCli } from './lib/cli.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { BIN, ROOT, freePort, startProxy } from './lib/proxy.mjs';
import { bodyServer } from './lib/mgmt.mjs';

const T = (ms = 60000) => ({ timeout: ms });
const CLIENT_KEY = 'sk-client-google-5e1a';
const b64url = (buf) => Buffer.from(buf).toString('base64url');

const CLIENTS = {
  '681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com':
    { name: 'gemini', secret: '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', email: 'g@example.com', pkce: true },
  '1071006060591-tmhssin2h21lcre235vtolojh4g403ep.apps.googleusercontent.com':
    { name: 'antigravity', secret: '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', email: 'a@example.com', pkce: false },
};

// ---- the mock Google ------------------------------------------------------

const mock = {
  url: '',
  server: null,
  grants: new Map(),     // code -> { challenge, redirect_uri, client }
  tokens: new Map(),     // access token -> client name
  failures: [],
  refreshes: [],         // { client, refresh_token }
  load: [],              // loadCodeAssist bodies
  onboard: [],           // onboardUser bodies
  pendingOnboard: 0,     // how many onboardUser calls answer done:false first
  inference: [],         // { base, method, auth, body, ua }
  bad: [],               // hits on the failing base
  enabled: [],           // projects whose API the login turned on
  limited: [],           // requests answered 429 (project proj-q1)
  countLimited: new Set(), // access tokens whose countTokens calls get 429
  countLimitedHits: 0,
  apiState: { 'proj-one': 'ENABLED' }, // serviceusage states (else DISABLED)
  projects: ['proj-one', 'proj-two'],
  seq: 0,
};

function send(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function refuse(res, why, status = 400) {
  mock.failures.push(why);
  send(res, status, { error: 'invalid_request', error_description: `mock: ${why}` });
}

function issueTokens(client) {
  const n = ++mock.seq;
  const access = `ya29.${client.name}-ACCESS-${n}`;
  mock.tokens.set(access, client.name);
  return { access_token: access, expires_in: 3599, token_type: 'Bearer', scope: 'x',
    refresh_token: `1//${client.name}-REFRESH-${n}` };
}

function onToken(raw, res) {
  const q = new URLSearchParams(raw);
  const client = CLIENTS[q.get('client_id')];
  if (!client) return refuse(res, `client_id ${q.get('client_id')}`);
  if (q.get('client_secret') !== client.secret) return refuse(res, 'client_secret');
  if (q.get('grant_type') === 'refresh_token') {
    if (!/^1\/\//.test(q.get('refresh_token') || '')) return refuse(res, 'refresh_token');
    mock.refreshes.push({ client: client.name, refresh_token: q.get('refresh_token') });
    const t = issueTokens(client);
    delete t.refresh_token; // Google does not rotate it
    return send(res, 200, t);
  }
  if (q.get('grant_type') !== 'authorization_code') return refuse(res, 'grant_type');
  const g = mock.grants.get(q.get('code'));
  if (!g) return refuse(res, 'unknown code');
  mock.grants.delete(q.get('code'));
  if (g.client !== client.name) return refuse(res, 'code of another client');
  if (q.get('redirect_uri') !== g.redirect_uri) return refuse(res, `redirect_uri ${q.get('redirect_uri')}`);
  if (client.pkce) {
    const c = b64url(crypto.createHash('sha256').update(q.get('code_verifier') || '').digest());
    if (c !== g.challenge) return refuse(res, 'PKCE verifier does not match');
  } else if (q.has('code_verifier')) {
    return refuse(res, 'antigravity sends no code_verifier');
  }
  return send(res, 200, issueTokens(client));
}

function who(req) {
  const m = /^Bearer (\S+)$/.exec(req.headers.authorization || '');
  return m && mock.tokens.get(m[1]);
}

function codeAssist(method, req, raw, res) {
  const name = who(req);
  if (!name) return refuse(res, `${method}: unknown token`, 401);
  const body = JSON.parse(raw);
  if (body.metadata?.pluginType !== 'GEMINI' || body.metadata?.ideType !== 'IDE_UNSPECIFIED') {
    return refuse(res, `${method}: metadata`);
  }
  if (method === 'loadCodeAssist') {
    mock.load.push({ name, body });
    if (name === 'antigravity') {
      return send(res, 200, { currentTier: { id: 'standard-tier' }, cloudaicompanionProject: 'ag-proj-7' });
    }
    if (body.cloudaicompanionProject) {
      return send(res, 200, { currentTier: { id: 'standard-tier' }, cloudaicompanionProject: body.cloudaicompanionProject });
    }
    // a new account: no tier, no project yet
    return send(res, 200, { allowedTiers: [{ id: 'legacy-tier' }, { id: 'free-tier', isDefault: true }] });
  }
  mock.onboard.push({ name, body });
  if (body.tierId !== 'free-tier') return refuse(res, `onboardUser tier ${body.tierId}`);
  if (mock.pendingOnboard > 0) {
    mock.pendingOnboard--;
    return send(res, 200, { name: 'operations/onboard-1', done: false });
  }
  return send(res, 200, { name: 'operations/onboard-1', done: true,
    response: { cloudaicompanionProject: { id: 'managed-proj-9', name: 'managed' } } });
}

// v1internal inference: the envelope is checked, the answer wrapped.
function inference(base, method, req, raw, res) {
  const name = who(req);
  const body = JSON.parse(raw);
  mock.inference.push({ base, method, name, auth: req.headers.authorization, body, ua: req.headers['user-agent'],
    apiClient: req.headers['x-goog-api-client'] });
  if (!name) return send(res, 401, { error: { code: 401, message: 'bad token', status: 'UNAUTHENTICATED' } });
  if (body.project === 'proj-q1') {
    mock.limited.push(method);
    return send(res, 429, { error: { code: 429, message: 'Resource has been exhausted', status: 'RESOURCE_EXHAUSTED',
      details: [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '3600s' }] } });
  }
  if (method === 'countTokens' && mock.countLimited.has(req.headers.authorization)) {
    mock.countLimitedHits++;
    return send(res, 429, { error: { code: 429, message: 'Resource has been exhausted', status: 'RESOURCE_EXHAUSTED' } });
  }
  if (method === 'countTokens') {
    if (body.project !== undefined || !body.request?.contents) return refuse(res, 'countTokens body');
    return send(res, 200, { totalTokens: 42 });
  }
  if (typeof body.model !== 'string' || !body.request || !Array.isArray(body.request.contents)) {
    return refuse(res, 'not a v1internal envelope');
  }
  const tools = Array.isArray(body.request.tools) && body.request.tools.length > 0;
  const lastUser = [...body.request.contents].reverse().find((c) => c.role === 'user');
  const answeredTool = lastUser?.parts?.some((p) => p.functionResponse);
  const parts = tools && !answeredTool
    ? [{ functionCall: { name: 'get_weather', args: { city: 'Paris' } } }]
    : [{ text: `hello from ${name} ${body.project || 'no-project'}` }];
  if (body.request.generationConfig?.thinkingConfig?.includeThoughts) {
    parts.unshift({ text: 'pondering', thought: true, thoughtSignature: 'sig-think-1' });
  }
  const usage = { promptTokenCount: 11, candidatesTokenCount: 5, totalTokenCount: 16 };
  const full = { candidates: [{ content: { role: 'model', parts }, finishReason: 'STOP', index: 0 }],
    usageMetadata: usage, modelVersion: body.model, responseId: `r-${mock.inference.length}` };
  if (method === 'generateContent') return send(res, 200, { response: full, traceId: 'tr-1' });
  res.writeHead(200, { 'Content-Type': 'text/event-stream' });
  if (parts[0].thought) {
    res.write(`data: ${JSON.stringify({ response: { candidates: [{ content: { role: 'model', parts: [parts.shift()] }, index: 0 }],
      modelVersion: body.model, responseId: 'rs' }, traceId: 'tr-4' })}\r\n\r\n`);
  }
  if (parts[0].text) {
    const t = parts[0].text;
    const half = Math.floor(t.length / 2);
    res.write(`data: ${JSON.stringify({ response: { candidates: [{ content: { role: 'model', parts: [{ text: t.slice(0, half) }] }, index: 0 }],
      modelVersion: body.model, responseId: 'rs' }, traceId: 'tr-2' })}\r\n\r\n`);
    res.write(`data: ${JSON.stringify({ response: { candidates: [{ content: { role: 'model', parts: [{ text: t.slice(half) }] }, finishReason: 'STOP', index: 0 }],
      usageMetadata: usage, modelVersion: body.model, responseId: 'rs' }, traceId: 'tr-2' })}\r\n\r\n`);
  } else {
    res.write(`data: ${JSON.stringify({ response: full, traceId: 'tr-3' })}\r\n\r\n`);
  }
  res.end();
}

before(async () => {
  mock.server = bodyServer((req, res, raw) => {
    const u = new URL(req.url, 'http://x');
    const p = u.pathname;
    if (req.method === 'POST' && p === '/token') return onToken(raw, res);
    if (req.method === 'GET' && p === '/userinfo') {
      const name = who(req);
      if (!name) return refuse(res, 'userinfo: unknown token', 401);
      return send(res, 200, { id: '1', email: Object.values(CLIENTS).find((c) => c.name === name).email });
    }
    if (req.method === 'GET' && p === '/projects') {
      if (!who(req)) return refuse(res, 'projects: unknown token', 401);
      return send(res, 200, { projects: [
        ...mock.projects.map((id) => ({ projectId: id, lifecycleState: 'ACTIVE' })),
        { projectId: 'proj-gone', lifecycleState: 'DELETE_REQUESTED' }] });
    }
    const su = /^\/su\/v1\/projects\/([^/]+)\/services\/cloudaicompanion\.googleapis\.com(:enable)?$/.exec(p);
    if (su) {
      if (!who(req)) return refuse(res, 'serviceusage: unknown token', 401);
      if (req.method === 'POST' && su[2]) {
        mock.enabled.push(su[1]);
        mock.apiState[su[1]] = 'ENABLED';
        return send(res, 200, { name: 'operations/enable-1', done: true });
      }
      if (req.method === 'GET' && !su[2]) return send(res, 200, { state: mock.apiState[su[1]] || 'DISABLED' });
    }
    let m = /^\/(ca|ag|bad)\/v1internal:(\w+)$/.exec(p);
    if (req.method === 'POST' && m) {
      if (m[1] === 'bad') {
        mock.bad.push(m[2]);
        return send(res, 503, { error: { code: 503, message: 'unavailable', status: 'UNAVAILABLE' } });
      }
      if (m[2] === 'loadCodeAssist' || m[2] === 'onboardUser') return codeAssist(m[2], req, raw, res);
      if (m[1] === 'ca' && m[2] === 'streamGenerateContent' && u.searchParams.get('alt') !== 'sse') {
        return refuse(res, 'stream without alt=sse');
      }
      return inference(m[1], m[2], req, raw, res);
    }
    return send(res, 404, { error: 'not_found' });
  });
  await new Promise((r) => mock.server.listen(0, '127.0.0.1', r));
  mock.url = `http://127.0.0.1:${mock.server.address().port}`;
  await startServing();
});

after(async () => {
  await new Promise((r) => mock.server.close(r));
});

// ---- the login command ------------------------------------------------------

const endpoints = (extra = {}) => ({
  gemini: { 'auth-url': 'https://accounts.example/o/oauth2/v2/auth', 'token-url': `${mock.url}/token`,
    'userinfo-url': `${mock.url}/userinfo`, 'projects-url': `${mock.url}/projects`, 'api-base-url': `${mock.url}/ca`,
    'service-usage-url': `${mock.url}/su`,
    ...(extra.gemini || {}) },
  antigravity: { 'auth-url': 'https://accounts.example/o/oauth2/v2/auth', 'token-url': `${mock.url}/token`,
    'userinfo-url': `${mock.url}/userinfo`, 'api-base-url': `${mock.url}/ag`, ...(extra.antigravity || {}) },
});

function yamlOf(obj, indent = '') {
  return Object.entries(obj).map(([k, v]) => (v && typeof v === 'object' && !Array.isArray(v)
    ? `${indent}${k}:\n${yamlOf(v, indent + '  ')}`
    : Array.isArray(v) ? `${indent}${k}:\n${v.map((x) => `${indent}  - ${JSON.stringify(x)}`).join('\n')}`
      : `${indent}${k}: ${JSON.stringify(v)}`)).join('\n');
}

function setup() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-google-'));
  const authDir = path.join(dir, 'auths');
  const configPath = path.join(dir, 'config.yaml');
  fs.writeFileSync(configPath, yamlOf({ host: '127.0.0.1', port: 1, 'auth-dir': authDir,
    'oauth-endpoints': endpoints() }) + '\n');
  return { dir, authDir, configPath, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}


const run = (args) => runCli(args);

// Reads the printed authorize URL, plays the user approving and the
// browser coming back; returns the command's result.
async function login(provider, args = [], legacy = null) {
  const s = setup();
  const port = await freePort();
  const p = run(legacy
    ? [...legacy, '-no-browser', '-oauth-callback-port', String(port), '-config', s.configPath, ...args]
    : ['login', provider, '--no-browser', '--callback-port', String(port), '-config', s.configPath, ...args]);
  const m = await p.waitFor(/^ {2}(https:\/\/\S+)$/m);
  const q = new URL(m[1]).searchParams;
  const client = CLIENTS[q.get('client_id')];
  assert.ok(client, `client_id ${q.get('client_id')}`);
  assert.equal(client.name, provider);
  assert.equal(q.get('access_type'), 'offline');
  assert.equal(q.get('prompt'), 'consent');
  assert.equal(q.get('response_type'), 'code');
  assert.ok(q.get('scope').split(' ').includes('https://www.googleapis.com/auth/cloud-platform'));
  const cbPath = provider === 'gemini' ? '/oauth2callback' : '/oauth-callback';
  assert.equal(q.get('redirect_uri'), `http://localhost:${port}${cbPath}`);
  if (provider === 'gemini') assert.equal(q.get('code_challenge_method'), 'S256');
  else {
    assert.equal(q.get('code_challenge'), null, 'antigravity: no PKCE');
    assert.ok(q.get('scope').includes('experimentsandconfigs'));
  }
  await p.waitFor(/Waiting for the browser/);
  const code = `code-${crypto.randomBytes(6).toString('hex')}`;
  mock.grants.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri'), client: provider });
  const cb = new URL(q.get('redirect_uri'));
  cb.hostname = '127.0.0.1';
  cb.searchParams.set('code', code);
  cb.searchParams.set('state', q.get('state'));
  const page = await fetch(cb);
  const text = await page.text();
  const r = await p.done;
  return { ...r, page: { status: page.status, text }, s };
}

function readCred(authDir, name) {
  const file = path.join(authDir, name);
  return { mode: fs.statSync(file).mode & 0o777, doc: JSON.parse(fs.readFileSync(file, 'utf8')) };
}

const noSecrets = (r) => assert.doesNotMatch(r.out + r.err, /ACCESS-|REFRESH-|code-[0-9a-f]{12}|GOCSPX/);

test('gemini login: email, loadCodeAssist, onboarding pending then done, the managed project in the file', T(), async () => {
  mock.pendingOnboard = 1;
  const before = mock.onboard.length;
  const r = await login('gemini');
  try {
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Looking up the account at http:\/\/127\.0\.0\.1:\d+\/userinfo/);
    assert.match(r.out, /Loading Code Assist at .*\/ca\/v1internal:loadCodeAssist/);
    assert.match(r.out, /Onboarding the account \(tier free-tier\)/);
    assert.match(r.out, /Onboarding is still running; asking again in 2 s/);
    assert.match(r.out, /Onboarding done/);
    assert.match(r.out, /Using project managed-proj-9/);
    assert.equal(mock.onboard.length - before, 2, 'asked again once');
    const ob = mock.onboard.at(-1).body;
    assert.deepEqual(Object.keys(ob), ['tierId', 'metadata']);
    const name = 'gemini-g@example.com-managed-proj-9.json';
    assert.ok(r.out.includes(`Saved ${path.join(r.s.authDir, name)} (g@example.com)`), r.out);
    assert.equal(r.page.status, 200);
    assert.match(r.page.text, /Login successful/);
    noSecrets(r);
    const { mode, doc } = readCred(r.s.authDir, name);
    assert.equal(mode, 0o600);
    assert.equal(doc.type, 'gemini');
    assert.equal(doc.project_id, 'managed-proj-9');
    assert.equal(doc.email, 'g@example.com');
    assert.equal(doc.auto, true);
    assert.equal(doc.checked, false);
    assert.deepEqual(Object.keys(doc).slice(0, 6), ['token', 'project_id', 'email', 'auto', 'checked', 'type']);
    assert.match(doc.token.access_token, /^ya29\.gemini-ACCESS-/);
    assert.match(doc.token.refresh_token, /^1\/\/gemini-REFRESH-/);
    assert.equal(doc.token.token_type, 'Bearer');
    assert.equal(doc.token.token_uri, `${mock.url}/token`);
    assert.equal(doc.token.client_id, Object.keys(CLIENTS)[0]);
    assert.equal(doc.token.universe_domain, 'googleapis.com');
    assert.equal(doc.token.scopes.length, 3);
    const life = Date.parse(doc.token.expiry) - Date.now();
    assert.ok(life > 3000e3 && life <= 3600e3, doc.token.expiry); // expires_in 3599 from the login's clock
    assert.equal(doc.access_token, doc.token.access_token);
  } finally {
    r.s.cleanup();
  }
});

test('gemini login --project-id all: one file per active project, each loaded for its project', T(), async () => {
  const before = mock.load.length;
  const r = await login('gemini', ['--project-id', 'all']);
  try {
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Listing the account's projects at .*\/projects/);
    const loads = mock.load.slice(before).map((l) => l.body.cloudaicompanionProject);
    assert.deepEqual(loads, ['proj-one', 'proj-two']);
    for (const p of ['proj-one', 'proj-two']) {
      const { mode, doc } = readCred(r.s.authDir, `gemini-g@example.com-${p}.json`);
      assert.equal(mode, 0o600);
      assert.equal(doc.project_id, p);
      assert.equal(doc.auto, false);
      assert.equal(doc.checked, true);
    }
    // proj-one had the API on; proj-two was turned on
    assert.match(r.out, /cloudaicompanion\.googleapis\.com is DISABLED on proj-two: enabling it/);
    assert.deepEqual(mock.enabled, ['proj-two']);
    assert.deepEqual(fs.readdirSync(r.s.authDir).filter((f) => f.endsWith('.json')).sort(),
      ['gemini-g@example.com-proj-one.json', 'gemini-g@example.com-proj-two.json']);
    noSecrets(r);
  } finally {
    r.s.cleanup();
  }
});

test('gemini login with CLIProxyAPI\'s spelling: -login -project_id ID (an enabled project, no onboarding)', T(), async () => {
  const before = mock.onboard.length;
  const r = await login('gemini', ['-project_id', 'proj-one'], ['-login']);
  try {
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Code Assist is set up \(standard-tier\)/);
    assert.equal(mock.onboard.length, before, 'no onboarding for a set-up project');
    const { doc } = readCred(r.s.authDir, 'gemini-g@example.com-proj-one.json');
    assert.equal(doc.project_id, 'proj-one');
    assert.equal(doc.auto, false);
    assert.equal(doc.checked, true);
  } finally {
    r.s.cleanup();
  }
});

test('gemini login: a failing Code Assist step ends the login with the step, the URL and the answer', T(), async () => {
  const saved = mock.projects;
  mock.projects = [];
  const r = await login('gemini', ['--project-id', 'all']);
  mock.projects = saved;
  try {
    assert.notEqual(r.code, 0);
    assert.match(r.out + r.err, /no active Google Cloud project/);
    assert.equal(r.page.status, 502);
    assert.equal(fs.existsSync(r.s.authDir) ? fs.readdirSync(r.s.authDir).filter((f) => f.endsWith('.json')).length : 0, 0);
  } finally {
    r.s.cleanup();
  }
});

test('antigravity login: no PKCE, the secret in the exchange, the project from loadCodeAssist', T(), async () => {
  const r = await login('antigravity');
  try {
    assert.equal(r.code, 0, `${r.out}\n${r.err}\nmock: ${mock.failures.join('; ')}`);
    assert.match(r.out, /Using project ag-proj-7/);
    const { mode, doc } = readCred(r.s.authDir, 'antigravity-a@example.com.json');
    assert.equal(mode, 0o600);
    assert.equal(doc.type, 'antigravity');
    assert.equal(doc.email, 'a@example.com');
    assert.equal(doc.project_id, 'ag-proj-7');
    assert.equal(doc.expires_in, 3599);
    assert.ok(Math.abs(doc.timestamp - Date.now()) < 600e3, String(doc.timestamp));
    assert.ok(Date.parse(doc.expired) > Date.now());
    assert.match(doc.access_token, /^ya29\.antigravity-ACCESS-/);
    assert.match(doc.refresh_token, /^1\/\/antigravity-REFRESH-/);
    assert.deepEqual(Object.keys(doc).slice(0, 5), ['type', 'access_token', 'refresh_token', 'expires_in', 'timestamp']);
    noSecrets(r);
  } finally {
    r.s.cleanup();
  }
});

// ---- serving: the SDKs through cliproxy -------------------------------------

let proxy, dir, gg, an, oa;
const MODEL_CLI = 'cli-pro';
const MODEL_AG = 'ag-pro';

function token(name) {
  const client = Object.values(CLIENTS).find((c) => c.name === name);
  return issueTokens(client).access_token;
}

function writeCred(name, doc) {
  fs.writeFileSync(path.join(dir, name), JSON.stringify(doc), { mode: 0o600 });
}

async function startServing() {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-google-serve-'));
  const far = new Date(Date.now() + 3600e3).toISOString();
  const cliTok = token('gemini');
  // a v6 file: the tokens only in the nested oauth2 token
  writeCred('gemini-g@example.com-proj-serve.json', {
    token: { access_token: cliTok, token_type: 'Bearer', refresh_token: '1//gemini-REFRESH-serve', expiry: far,
      token_uri: 'https://oauth2.googleapis.com/token', client_id: Object.keys(CLIENTS)[0] },
    project_id: 'proj-serve', email: 'g@example.com', auto: false, checked: true, type: 'gemini',
  });
  writeCred('antigravity-a@example.com.json', {
    type: 'antigravity', access_token: token('antigravity'), refresh_token: '1//antigravity-REFRESH-serve',
    expires_in: 3599, timestamp: Date.now(), expired: far, email: 'a@example.com', project_id: 'ag-proj-serve',
  });
  // expired tokens (prefix old/): the first request refreshes them
  writeCred('antigravity-old@example.com.json', {
    type: 'antigravity', access_token: 'ya29.stale-ag', refresh_token: '1//antigravity-REFRESH-old',
    expired: new Date(Date.now() - 60e3).toISOString(), email: 'old@example.com', project_id: 'ag-proj-old',
    prefix: 'old',
  });
  // two accounts of one model (prefix q/): the first is out of quota
  for (const q of ['q1', 'q2']) {
    writeCred(`gemini-${q}@example.com-proj-${q}.json`, {
      token: { access_token: token('gemini'), refresh_token: `1//gemini-REFRESH-${q}`, expiry: far },
      project_id: `proj-${q}`, email: `${q}@example.com`, type: 'gemini', prefix: 'q',
    });
  }
  // a token Google no longer takes (not expired by its file): 401, refresh, retry
  writeCred('gemini-rev@example.com-rev.json', {
    token: { access_token: 'ya29.revoked', refresh_token: '1//gemini-REFRESH-rev', expiry: far },
    project_id: 'proj-rev', email: 'rev@example.com', type: 'gemini', prefix: 'rev',
  });
  writeCred('gemini-old2@example.com-x.json', {
    token: { access_token: 'ya29.stale-gemini2', refresh_token: '1//gemini-REFRESH-old2',
      expiry: new Date(Date.now() - 60e3).toISOString() },
    project_id: 'proj-old2', email: 'old2@example.com', type: 'gemini', prefix: 'old',
  });
  const ep = endpoints({ antigravity: {
    'api-base-urls': ['http://127.0.0.1:1', `${mock.url}/bad`, `${mock.url}/ag`] } });
  delete ep.antigravity['api-base-url']; // the list, not one host
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    extra: {
      'auth-dir': dir,
      'oauth-endpoints': ep,
      'force-model-prefix': true,
      'oauth-model-alias': {
        gemini: [{ name: 'gemini-2.5-pro', alias: MODEL_CLI }],
        antigravity: [{ name: 'gemini-2.5-pro', alias: MODEL_AG }],
      },
      'oauth-refresh': { 'check-seconds': 60 },
    },
  });
  gg = new GoogleGenAI({ apiKey: CLIENT_KEY, httpOptions: { baseUrl: proxy.url, timeout: 15000, retryOptions: { attempts: 1 } } });
  an = new Anthropic({ apiKey: CLIENT_KEY, baseURL: proxy.url, maxRetries: 0, timeout: 15000 });
  oa = new OpenAI({ apiKey: CLIENT_KEY, baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 15000 });
}

after(async () => {
  if (proxy) await proxy.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const WEATHER = { name: 'get_weather', description: 'weather of a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } };

function lastCall(base) {
  const hits = mock.inference.filter((h) => h.base === base);
  return hits.at(-1);
}

function checkEnvelope(hit, kind, stream) {
  assert.ok(hit, 'the mock saw the request');
  assert.equal(hit.method, stream ? 'streamGenerateContent' : 'generateContent');
  assert.equal(hit.body.model, 'gemini-2.5-pro');
  if (kind === 'cli') {
    assert.equal(hit.body.project, 'proj-serve');
    assert.deepEqual(Object.keys(hit.body), ['model', 'project', 'request']);
    assert.match(hit.ua, /^GeminiCLI\/0\.31\.0\/gemini-2\.5-pro /);
    assert.equal(hit.apiClient, 'google-genai-sdk/1.41.0 gl-node/v22.19.0');
  } else {
    assert.equal(hit.body.project, 'ag-proj-serve');
    assert.deepEqual(Object.keys(hit.body), ['model', 'userAgent', 'requestType', 'project', 'requestId', 'request']);
    assert.equal(hit.body.userAgent, 'antigravity');
    assert.equal(hit.body.requestType, 'agent');
    assert.match(hit.body.requestId, /^agent-[0-9a-f-]{36}$/);
    assert.match(hit.body.request.sessionId, /^-\d+$/);
    assert.equal(hit.body.request.safetySettings, undefined);
    assert.match(hit.ua, /^antigravity\/\S+ darwin\/arm64$/);
  }
}

for (const [kind, model, base, proj] of [['cli', MODEL_CLI, 'ca', 'proj-serve'], ['ag', MODEL_AG, 'ag', 'ag-proj-serve']]) {
  const who = kind === 'cli' ? 'gemini' : 'antigravity';

  test(`${kind}: @google/genai generateContent, non-stream and stream, answers unwrapped`, T(), async () => {
    const r = await gg.models.generateContent({ model, contents: 'hi',
      config: { safetySettings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }] } });
    assert.equal(r.text, `hello from ${who} ${proj}`);
    assert.equal(r.usageMetadata.totalTokenCount, 16);
    checkEnvelope(lastCall(base), kind, false);
    let text = '';
    let usage;
    for await (const ch of await gg.models.generateContentStream({ model, contents: 'hi' })) {
      text += ch.text || '';
      if (ch.usageMetadata) usage = ch.usageMetadata;
    }
    assert.equal(text, `hello from ${who} ${proj}`);
    assert.equal(usage.totalTokenCount, 16);
    checkEnvelope(lastCall(base), kind, true);
  });

  test(`${kind}: @google/genai with tools: the function call, then the answer to its result`, T(), async () => {
    const r = await gg.models.generateContent({ model, contents: 'weather in Paris?',
      config: { tools: [{ functionDeclarations: [WEATHER] }] } });
    assert.equal(r.functionCalls[0].name, 'get_weather');
    assert.deepEqual(r.functionCalls[0].args, { city: 'Paris' });
    const r2 = await gg.models.generateContent({ model, config: { tools: [{ functionDeclarations: [WEATHER] }] },
      contents: [{ role: 'user', parts: [{ text: 'weather in Paris?' }] },
        { role: 'model', parts: [{ functionCall: { name: 'get_weather', args: { city: 'Paris' } } }] },
        { role: 'user', parts: [{ functionResponse: { name: 'get_weather', response: { temp: 21 } } }] }] });
    assert.equal(r2.text, `hello from ${who} ${proj}`);
    const hit = lastCall(base);
    const fc = hit.body.request.contents[1].parts[0];
    assert.equal(fc.thoughtSignature, 'skip_thought_signature_validator');
  });

  test(`${kind}: Anthropic SDK, non-stream and stream, with a tool`, T(), async () => {
    const m = await an.messages.create({ model, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(m.content[0].text, `hello from ${who} ${proj}`);
    assert.equal(m.usage.output_tokens, 5);
    checkEnvelope(lastCall(base), kind, false);
    const tool = { name: 'get_weather', description: 'weather', input_schema: WEATHER.parameters };
    const t = await an.messages.create({ model, max_tokens: 64, tools: [tool],
      messages: [{ role: 'user', content: 'weather in Paris?' }] });
    const use = t.content.find((b) => b.type === 'tool_use');
    assert.ok(use, JSON.stringify(t.content));
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, { city: 'Paris' });
    const s = an.messages.stream({ model, max_tokens: 64, tools: [tool],
      messages: [{ role: 'user', content: 'weather in Paris?' }] });
    const fin = await s.finalMessage();
    const su = fin.content.find((b) => b.type === 'tool_use');
    assert.ok(su, JSON.stringify(fin.content));
    assert.deepEqual(su.input, { city: 'Paris' });
    checkEnvelope(lastCall(base), kind, true);
    const s2 = an.messages.stream({ model, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal((await s2.finalMessage()).content[0].text, `hello from ${who} ${proj}`);
  });

  test(`${kind}: Anthropic SDK with thinking: thinkingConfig upstream, the thought back as a thinking block`, T(), async () => {
    const m = await an.messages.create({ model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [{ role: 'user', content: 'think' }] });
    const hit = lastCall(base);
    assert.ok(hit.body.request.generationConfig.thinkingConfig, JSON.stringify(hit.body.request.generationConfig));
    const th = m.content.find((b) => b.type === 'thinking');
    assert.ok(th, JSON.stringify(m.content));
    assert.equal(th.thinking, 'pondering');
    assert.equal(m.content.find((b) => b.type === 'text').text, `hello from ${who} ${proj}`);
    const s = an.messages.stream({ model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [{ role: 'user', content: 'think' }] });
    const fin = await s.finalMessage();
    assert.equal(fin.content.find((b) => b.type === 'thinking')?.thinking, 'pondering', JSON.stringify(fin.content));
  });

  test(`${kind}: OpenAI chat, non-stream and stream`, T(), async () => {
    const c = await oa.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(c.choices[0].message.content, `hello from ${who} ${proj}`);
    assert.equal(c.usage.total_tokens, 16);
    const st = await oa.chat.completions.create({ model, stream: true, messages: [{ role: 'user', content: 'hi' }],
      tools: [{ type: 'function', function: WEATHER }] });
    let args = '';
    let fname;
    for await (const ch of st) {
      for (const tc of ch.choices[0]?.delta?.tool_calls || []) {
        if (tc.function?.name) fname = tc.function.name;
        args += tc.function?.arguments || '';
      }
    }
    assert.equal(fname, 'get_weather');
    assert.deepEqual(JSON.parse(args), { city: 'Paris' });
    checkEnvelope(lastCall(base), kind, true);
  });

  test(`${kind}: a Gemini stream without alt=sse is a JSON array of unwrapped chunks`, T(), async () => {
    const res = await fetch(`${proxy.url}/v1beta/models/${model}:streamGenerateContent`, {
      method: 'POST', headers: { 'x-goog-api-key': CLIENT_KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }) });
    assert.equal(res.status, 200);
    const arr = JSON.parse(await res.text());
    assert.ok(Array.isArray(arr) && arr.length >= 1);
    assert.ok(arr.every((c) => c.response === undefined && Array.isArray(c.candidates)), JSON.stringify(arr));
    assert.equal(arr.map((c) => c.candidates[0].content?.parts?.map((p) => p.text).join('') || '').join(''),
      `hello from ${who} ${proj}`);
  });

  test(`${kind}: countTokens through Code Assist, unwrapped`, T(), async () => {
    const r = await gg.models.countTokens({ model, contents: 'count me' });
    assert.equal(r.totalTokens, 42);
    const hit = mock.inference.filter((h) => h.base === base && h.method === 'countTokens').at(-1);
    assert.equal(hit.body.request.model, 'models/gemini-2.5-pro');
  });
}

test('antigravity: a refused connection and a 503 on the first hosts, the third answers', T(), async () => {
  const before = mock.bad.length;
  const r = await gg.models.generateContent({ model: MODEL_AG, contents: 'hi' });
  assert.equal(r.text, 'hello from antigravity ag-proj-serve');
  assert.equal(mock.bad.length - before, 1, 'the 503 host was tried once');
  assert.equal(mock.bad.at(-1), 'generateContent');
  let text = '';
  for await (const ch of await gg.models.generateContentStream({ model: MODEL_AG, contents: 'hi' })) text += ch.text || '';
  assert.equal(text, 'hello from antigravity ag-proj-serve');
  assert.equal(mock.bad.at(-1), 'streamGenerateContent');
});

test('refresh: expired Gemini CLI and Antigravity tokens are refreshed at the Google token endpoint before use', T(), async () => {
  // the scheduler may have refreshed them at start already: all refreshes count
  const before = 0;
  // `old/` prefixed files: one Gemini CLI, one Antigravity
  const r2 = await an.messages.create({ model: `old/${MODEL_AG}`, max_tokens: 16,
    messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r2.content[0].text, 'hello from antigravity ag-proj-old');
  const got = mock.refreshes.slice(before).map((x) => x.refresh_token).sort();
  assert.ok(got.includes('1//antigravity-REFRESH-old'), got.join(','));
  // the refreshed files: new access token, refresh token kept, fields kept
  const ag = JSON.parse(fs.readFileSync(path.join(dir, 'antigravity-old@example.com.json'), 'utf8'));
  assert.match(ag.access_token, /^ya29\.antigravity-ACCESS-/);
  assert.equal(ag.refresh_token, '1//antigravity-REFRESH-old');
  assert.equal(ag.project_id, 'ag-proj-old');
  assert.equal(ag.expires_in, 3599);
  assert.ok(Date.parse(ag.expired) > Date.now());
  assert.equal(fs.statSync(path.join(dir, 'antigravity-old@example.com.json')).mode & 0o777, 0o600);
  // Gemini: through the Anthropic SDK too (the prefixed name works there)
  const r3 = await an.messages.create({ model: `old/${MODEL_CLI}`, max_tokens: 16,
    messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r3.content[0].text, 'hello from gemini proj-old2');
  assert.ok(mock.refreshes.slice(before).some((x) => x.refresh_token === '1//gemini-REFRESH-old2'));
  const g = JSON.parse(fs.readFileSync(path.join(dir, 'gemini-old2@example.com-x.json'), 'utf8'));
  assert.match(g.token.access_token, /^ya29\.gemini-ACCESS-/);
  assert.equal(g.token.access_token, g.access_token);
  assert.equal(g.token.refresh_token, '1//gemini-REFRESH-old2');
  assert.ok(Date.parse(g.token.expiry) > Date.now(), g.token.expiry);
  assert.equal(g.project_id, 'proj-old2');
  assert.equal(g.type, 'gemini');
});

test('refresh: a Gemini CLI token the upstream refuses (401) is refreshed once and the request retried', T(), async () => {
  const r = await gg.models.generateContent({ model: `rev/${MODEL_CLI}`, contents: 'hi' }).catch((e) => e);
  assert.equal(r.text, 'hello from gemini proj-rev', String(r?.message || ''));
  const hits = mock.inference.filter((h) => h.body.project === 'proj-rev');
  assert.equal(hits.length, 2);
  assert.equal(hits[0].auth, 'Bearer ya29.revoked');
  assert.match(hits[1].auth, /^Bearer ya29\.gemini-ACCESS-/);
  assert.ok(mock.refreshes.some((x) => x.refresh_token === '1//gemini-REFRESH-rev'));
  const g = JSON.parse(fs.readFileSync(path.join(dir, 'gemini-rev@example.com-rev.json'), 'utf8'));
  assert.equal(`Bearer ${g.token.access_token}`, hits[1].auth);
});

test('countTokens on an account whose token the upstream refuses: refreshed once and retried, not a 401', T(), async () => {
  writeCred('gemini-cnt@example.com-cnt.json', {
    token: { access_token: 'ya29.revoked-count', refresh_token: '1//gemini-REFRESH-cnt',
      expiry: new Date(Date.now() + 3600e3).toISOString() },
    project_id: 'proj-cnt', email: 'cnt@example.com', type: 'gemini', prefix: 'cnt',
  });
  // the store picks the new file up
  let listed = false;
  for (let i = 0; i < 100 && !listed; i++) {
    const m = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: `Bearer ${CLIENT_KEY}` } })).json();
    listed = m.data.some((x) => x.id === `cnt/${MODEL_CLI}`);
    if (!listed) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(listed, 'the new account serves its model');
  const before = mock.inference.length;
  const r = await gg.models.countTokens({ model: `cnt/${MODEL_CLI}`, contents: 'count me' });
  assert.equal(r.totalTokens, 42);
  const hits = mock.inference.slice(before).filter((h) => h.method === 'countTokens');
  assert.equal(hits.length, 2);
  assert.equal(hits[0].auth, 'Bearer ya29.revoked-count');
  assert.match(hits[1].auth, /^Bearer ya29\.gemini-ACCESS-/);
  assert.ok(mock.refreshes.some((x) => x.refresh_token === '1//gemini-REFRESH-cnt'));
});

test('countTokens on an account out of quota: the local estimate, not the 429', T(), async () => {
  // a one-account group whose count calls the mock answers with 429
  const tok = token('gemini');
  mock.countLimited.add(`Bearer ${tok}`);
  writeCred('gemini-lim@example.com-lim.json', {
    token: { access_token: tok, refresh_token: '1//gemini-REFRESH-lim',
      expiry: new Date(Date.now() + 3600e3).toISOString() },
    project_id: 'proj-lim', email: 'lim@example.com', type: 'gemini', prefix: 'lim',
  });
  let listed = false;
  for (let i = 0; i < 100 && !listed; i++) {
    const m = await (await fetch(`${proxy.url}/v1/models`, { headers: { Authorization: `Bearer ${CLIENT_KEY}` } })).json();
    listed = m.data.some((x) => x.id === `lim/${MODEL_CLI}`);
    if (!listed) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(listed, 'the new account serves its model');
  const r = await gg.models.countTokens({ model: `lim/${MODEL_CLI}`, contents: 'count me please' });
  assert.equal(mock.countLimitedHits, 1, 'the upstream was asked and said 429');
  assert.ok(Number.isInteger(r.totalTokens) && r.totalTokens > 0 && r.totalTokens !== 42, String(r.totalTokens));
});

test('cooldown: a 429 with RetryInfo cools that Gemini CLI account; its requests go to the other one', T(), async () => {
  const seen = [];
  for (let i = 0; i < 4; i++) {
    const r = await gg.models.generateContent({ model: `q/${MODEL_CLI}`, contents: 'hi' });
    seen.push(r.text);
  }
  assert.deepEqual(seen, Array(4).fill('hello from gemini proj-q2'));
  // round robin reaches q1 in four requests; asked once, then it cools
  // for the hour Google named
  assert.equal(mock.limited.length, 1, `429 answers: ${mock.limited.length}`);
});

test('management API: /gemini-cli-auth-url and /antigravity-auth-url logins run the same steps as cliproxy login, the redirect pasted to /oauth-callback', T(), async () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-google-mgmt-'));
  const p = await startProxy({ extra: { 'auth-dir': d, 'oauth-endpoints': endpoints(),
    'remote-management': { 'secret-key': 'mgmt-key-google' } } });
  const api = (route, init = {}) => fetch(`${p.url}/v0/management${route}`,
    { ...init, headers: { Authorization: 'Bearer mgmt-key-google', 'Content-Type': 'application/json' } });
  try {
    for (const [route, provider, email] of [['gemini-cli', 'gemini', 'g@example.com'], ['antigravity', 'antigravity', 'a@example.com']]) {
      const start = await (await api(`/${route}-auth-url?is_webui=true`)).json();
      assert.equal(start.status, 'ok', JSON.stringify(start));
      const q = new URL(start.url).searchParams;
      assert.equal(CLIENTS[q.get('client_id')].name, provider);
      assert.equal(q.get('state'), start.state);
      assert.equal((await (await api(`/get-auth-status?state=${start.state}`)).json()).status, 'wait');
      const code = `code-${crypto.randomBytes(6).toString('hex')}`;
      mock.grants.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri'), client: provider });
      const cb = await api('/oauth-callback', { method: 'POST', body: JSON.stringify({ provider: route,
        redirect_url: `${q.get('redirect_uri')}?code=${code}&state=${start.state}` }) });
      const cbBody = await cb.json();
      assert.equal(cb.status, 200, `${JSON.stringify(cbBody)}\nmock: ${mock.failures.join('; ')}`);
      const st = await (await api(`/get-auth-status?state=${start.state}`)).json();
      assert.equal(st.status, 'ok');
      assert.equal(st.file, cbBody.file);
      assert.ok(st.file.startsWith(`${provider}-${email}`), st.file);
      const { mode, doc } = readCred(d, st.file);
      assert.equal(mode, 0o600);
      assert.equal(doc.type, provider);
      assert.equal(doc.email, email); // the userinfo step ran
      assert.ok(doc.project_id, 'the Code Assist step gave a project');
    }
    assert.doesNotMatch(p.stdout() + p.stderr(), /ACCESS-|REFRESH-|code-[0-9a-f]{12}|GOCSPX/);
  } finally {
    await p.stop();
    fs.rmSync(d, { recursive: true, force: true });
  }
});
