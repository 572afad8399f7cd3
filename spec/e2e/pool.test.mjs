// Issue 4 end to end: the account pool, retries, cooldowns and the
// credential directory, with several mock accounts behind one proxy.
//
// Each case has its own openai-compatibility entry (own keys, own model
// alias), so one case's cooldowns never touch another's:
//   rl    (rl-1, rl-2)  pool-429    a 429 with retry-after on the first key hit
//   cool  (c-1, c-2)    pool-cool   every key answers 429 retry-after 30
//   five  (f-1, f-2)    pool-500    the first key hit answers 500
//   bad   (b-1, b-2)    pool-400    every key answers 400 invalid_request_error
//   alias (a-1)         pool-alias  upstream names up-a (500) and up-b (ok)
// Credential files go into the proxy's auth-dir (type claude, base_url
// pointing at the mock).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const CLIENT_KEY = 'sk-client-pool-e2e';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 15000) => ({ timeout: ms });

let mock, proxy, authDir;
const state = { rlBlocked: null, fiveFailed: null };

const keyOf = (req) => (req.headers.authorization || '').replace(/^Bearer /, '');

function route(req) {
  const key = keyOf(req);
  switch (req.model) {
    case 'pool-429':
      if (state.rlBlocked === null) state.rlBlocked = key;
      if (key === state.rlBlocked && !state.rlReleased) {
        return { error: { status: 429, message: 'slow down', headers: { 'retry-after': '2' } } };
      }
      return { text: `served by ${key}` };
    case 'pool-cool':
      return { error: { status: 429, message: 'quota exhausted', headers: { 'retry-after': '30' } } };
    case 'pool-500':
      if (state.fiveFailed === null) {
        state.fiveFailed = key;
        return { error: { status: 500, message: 'boom' } };
      }
      return { text: `served by ${key}` };
    case 'pool-400':
      return { error: { status: 400, message: 'bad field', type: 'invalid_request_error' } };
    case 'up-a':
      return { error: { status: 500, message: 'up-a is down' } };
    case 'up-b':
      return { text: 'served by up-b' };
    default:
      return { text: `served ${req.model} for ${key}` };
  }
}

async function chat(model, extraHeaders = {}) {
  const r = await fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}`, ...extraHeaders },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: r.status, headers: r.headers, body };
}

const reqsFor = (model) => mock.requests.filter((r) => r.model === model);

before(async () => {
  mock = await startMock();
  mock.reply(route);
  const entry = (name, keys, models) => ({ name, baseUrl: `${mock.url}/v1`, keys, models });
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    openaiCompat: [
      entry('rl', ['rl-1', 'rl-2'], [{ name: 'pool-429', alias: 'pool-429' }]),
      entry('cool', ['c-1', 'c-2'], [{ name: 'pool-cool', alias: 'pool-cool' }]),
      entry('five', ['f-1', 'f-2'], [{ name: 'pool-500', alias: 'pool-500' }]),
      entry('bad', ['b-1', 'b-2'], [{ name: 'pool-400', alias: 'pool-400' }]),
      entry('alias', ['a-1'], [{ name: 'up-a', alias: 'pool-alias' }, { name: 'up-b', alias: 'pool-alias' }]),
    ],
  });
  authDir = path.join(proxy.dir, 'auths');
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

test('a 429 with retry-after is served by the next account; the first is skipped until its reset', T(), async () => {
  const r = await chat('pool-429');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const first = state.rlBlocked;
  const other = first === 'rl-1' ? 'rl-2' : 'rl-1';
  assert.match(r.body.choices[0].message.content, new RegExp(`served by ${other}`));
  assert.deepEqual(reqsFor('pool-429').map(keyOf), [first, other]);
  // During the 2 s window every request goes to the other key only.
  for (let i = 0; i < 4; i++) {
    const x = await chat('pool-429');
    assert.equal(x.status, 200);
  }
  assert.deepEqual(reqsFor('pool-429').slice(2).map(keyOf), [other, other, other, other]);
  // After the reset the first key is tried again (the half-open probe).
  state.rlReleased = true;
  await sleep(2200);
  const seen = new Set();
  for (let i = 0; i < 3; i++) {
    const x = await chat('pool-429');
    assert.equal(x.status, 200);
    seen.add(x.body.choices[0].message.content);
  }
  assert.ok(seen.has(`served by ${first}`), `first key back in rotation: ${[...seen]}`);
});

test('every account cooling: 429 model_cooldown with Retry-After', T(), async () => {
  const r1 = await chat('pool-cool');
  // Both keys were tried; the last upstream 429 comes back.
  assert.equal(r1.status, 429);
  assert.equal(reqsFor('pool-cool').length, 2);
  const r2 = await chat('pool-cool');
  assert.equal(r2.status, 429);
  assert.equal(reqsFor('pool-cool').length, 2, 'no upstream request while cooling');
  const e = r2.body.error;
  assert.equal(e.code, 'model_cooldown');
  assert.equal(e.model, 'pool-cool');
  assert.match(e.message, /^All credentials for model pool-cool are cooling down/);
  assert.ok(e.reset_seconds > 25 && e.reset_seconds <= 30, `reset_seconds ${e.reset_seconds}`);
  assert.match(e.reset_time, /^\d+s$/);
  const ra = Number(r2.headers.get('retry-after'));
  assert.ok(ra > 25 && ra <= 30, `Retry-After ${ra}`);
});

test('500 is retried on another account', T(), async () => {
  const r = await chat('pool-500');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const keys = reqsFor('pool-500').map(keyOf);
  assert.equal(keys.length, 2);
  assert.notEqual(keys[0], keys[1]);
  assert.equal(keys[0], state.fiveFailed);
});

test('400 invalid_request_error is returned at once, without a retry', T(), async () => {
  const r = await chat('pool-400');
  assert.equal(r.status, 400);
  assert.equal(r.body.error.message, 'bad field');
  assert.equal(reqsFor('pool-400').length, 1);
  // And it does not cool the account down: the next request is tried too.
  const r2 = await chat('pool-400');
  assert.equal(r2.status, 400);
  assert.equal(reqsFor('pool-400').length, 2);
});

test('an alias pool falls over to its second upstream name', T(), async () => {
  const r = await chat('pool-alias');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.choices[0].message.content, 'served by up-b');
  const models = mock.requests.filter((q) => q.model === 'up-a' || q.model === 'up-b').map((q) => q.model);
  assert.deepEqual(models, ['up-a', 'up-b']);
  // up-a is cooling now: the next request goes straight to up-b.
  const r2 = await chat('pool-alias');
  assert.equal(r2.status, 200);
  assert.equal(mock.requests.filter((q) => q.model === 'up-a').length, 1);
});

// ---- the credential directory -------------------------------------------

const CRED_MODEL = 'claude-sonnet-4-5-20250929';

function writeCred(name, obj) {
  const tmp = path.join(authDir, `.${name}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(obj), { mode: 0o600 });
  fs.renameSync(tmp, path.join(authDir, name));
}

async function until(fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return v;
    await sleep(50);
  }
}

test('a credential file dropped into auth-dir is used without a restart; a deleted one is not', T(20000), async () => {
  const before = await chat(CRED_MODEL);
  assert.equal(before.status, 502);
  assert.match(before.body.error.message, /unknown provider for model/);
  writeCred('claude-drop@example.com.json', {
    type: 'claude', access_token: 'tok-dropped', email: 'drop@example.com', base_url: mock.url,
  });
  const r = await until(async () => { const x = await chat(CRED_MODEL); return x.status === 200 && x; });
  assert.ok(r, 'the dropped credential serves the model');
  const q = mock.requests.filter((x) => x.model === CRED_MODEL).at(-1);
  assert.equal(q.headers.authorization, 'Bearer tok-dropped');
  assert.match(q.headers['anthropic-beta'] || '', /oauth-2025-04-20/);
  const list = await (await fetch(`${proxy.url}/v1/models`, { headers: { authorization: `Bearer ${CLIENT_KEY}` } })).json();
  assert.ok(list.data.some((m) => m.id === CRED_MODEL), 'listed in /v1/models');

  fs.unlinkSync(path.join(authDir, 'claude-drop@example.com.json'));
  const gone = await until(async () => { const x = await chat(CRED_MODEL); return x.status === 502 && x; });
  assert.ok(gone, 'the deleted credential is no longer used');
});

test('a disabled credential is skipped; a malformed one is reported and skipped', T(20000), async () => {
  writeCred('claude-off.json', { type: 'claude', access_token: 'tok-off', base_url: mock.url, disabled: true });
  writeCred('claude-on.json', { type: 'claude', access_token: 'tok-on', base_url: mock.url });
  fs.writeFileSync(path.join(authDir, 'claude-broken.json'), '{"type": "claude", ', { mode: 0o600 });
  const r = await until(async () => { const x = await chat(CRED_MODEL); return x.status === 200 && x; });
  assert.ok(r);
  const n0 = mock.requests.length;
  for (let i = 0; i < 4; i++) assert.equal((await chat(CRED_MODEL)).status, 200);
  const auths = mock.requests.slice(n0).map((x) => x.headers.authorization);
  assert.deepEqual(auths, Array(4).fill('Bearer tok-on'));
  assert.match(proxy.stderr(), /claude-broken\.json skipped: malformed JSON/);
  for (const f of ['claude-off.json', 'claude-on.json', 'claude-broken.json']) fs.unlinkSync(path.join(authDir, f));
});

test('payload rules edit the upstream body after translation, by model wildcard and protocol', T(), async () => {
  const m2 = await startMock();
  const p2 = await startProxy({
    openaiCompat: [{ name: 'pl', baseUrl: `${m2.url}/v1`, keys: ['k'], models: ['pl-chat', 'other-chat'] }],
    extra: {
      payload: {
        default: [{ models: [{ name: 'pl-*', protocol: 'openai' }], params: { max_tokens: 77, temperature: 0.9 } }],
        override: [{ models: [{ name: 'pl-*' }], params: { temperature: 0.2, 'metadata.tag': 'forced' } }],
        filter: [{ models: [{ name: 'pl-*', protocol: 'openai' }], params: ['user'] }],
      },
    },
  });
  try {
    m2.reply({ text: 'ok' });
    const send = (body, pathname = '/v1/chat/completions', headers = {}) => fetch(`${p2.url}${pathname}`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body),
    }).then((r) => r.text().then((t) => ({ status: r.status, t })));
    // same format (the fast path must give way to the rules)
    let r = await send({ model: 'pl-chat', user: 'u1', temperature: 1, max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(r.status, 200, r.t);
    let b = m2.requests.at(-1).body;
    assert.equal(b.temperature, 0.2, 'override wins');
    assert.equal(b.max_tokens, 5, 'default only fills what is missing');
    assert.equal(b.metadata.tag, 'forced');
    assert.equal(b.user, undefined, 'filtered');
    // translated from an Anthropic client: applied to the Chat body upstream
    r = await send({ model: 'pl-chat', max_tokens: 9, messages: [{ role: 'user', content: 'hi' }] }, '/v1/messages',
      { 'anthropic-version': '2023-06-01' });
    assert.equal(r.status, 200, r.t);
    b = m2.requests.at(-1).body;
    assert.equal(b.temperature, 0.2);
    assert.equal(b.metadata.tag, 'forced');
    // a model the rules do not match is untouched
    r = await send({ model: 'other-chat', user: 'u2', messages: [{ role: 'user', content: 'hi' }] });
    b = m2.requests.at(-1).body;
    assert.equal(b.user, 'u2');
    assert.equal(b.temperature, undefined);
    assert.equal(b.max_tokens, undefined);
  } finally {
    await p2.stop();
    await m2.close();
  }
});

// ---- cooldowns across a restart -------------------------------------------

test('cooldowns are kept in auth-dir and outlive a restart', T(25000), async () => {
  const dir = fs.mkdtempSync(path.join(path.dirname(authDir), 'kept-'));
  fs.chmodSync(dir, 0o700);
  const file = path.join(dir, '.cliproxy-cooldowns.json');
  const cfg = {
    apiKeys: [CLIENT_KEY],
    openaiCompat: [{ name: 'keep', baseUrl: `${mock.url}/v1`, keys: ['k-1'], models: [{ name: 'pool-cool', alias: 'pool-kept' }] }],
    extra: { 'auth-dir': dir },
  };
  const ask = async (p) => {
    const r = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
      body: JSON.stringify({ model: 'pool-kept', messages: [{ role: 'user', content: 'hi' }] }),
    });
    return { status: r.status, headers: r.headers, body: await r.json() };
  };
  let p = await startProxy(cfg);
  try {
    const n0 = reqsFor('pool-cool').length;
    const r = await ask(p);
    assert.equal(r.status, 429); // the upstream's quota answer, Retry-After 30
    assert.equal(reqsFor('pool-cool').length, n0 + 1);
    // Saved within the saver's 2 s period, 0600, naming the account.
    const end = Date.now() + 5000;
    while (!fs.existsSync(file) && Date.now() < end) await sleep(100);
    assert.ok(fs.existsSync(file), 'cooldown file written');
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
    assert.equal(saved.states.length, 1);
    assert.match(saved.states[0].account, /^openai-compatibility:keep:/);
    assert.equal(saved.states[0].model, 'pool-cool');
    assert.ok(saved.states[0].until - Date.now() > 20000);
  } finally {
    await p.stop();
  }
  p = await startProxy(cfg);
  try {
    assert.match(p.stderr(), /pool: 1 cooldown\(s\) kept from before the restart/);
    const n0 = reqsFor('pool-cool').length;
    const r = await ask(p);
    assert.equal(r.status, 429);
    assert.equal(r.body.error.code, 'model_cooldown');
    assert.equal(reqsFor('pool-cool').length, n0, 'the exhausted account was not asked again');
    const ra = Number(r.headers.get('retry-after'));
    assert.ok(ra > 15 && ra <= 30, `Retry-After ${ra}`);
  } finally {
    await p.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
