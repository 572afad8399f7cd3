// Issue 13, management API route families against the real binary: the key
// lists (CLIProxyAPI's GET/PUT/PATCH/DELETE conventions) applied live and
// written into config.yaml without touching its other bytes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SECRET = 'routes-e2e-secret-4471';
const H = { 'X-Management-Key': SECRET };

let mock, proxy;

const config = (mockUrl) => `# routes e2e
host: "127.0.0.1"
port: \${PORT}
auth-dir: "\${AUTH_DIR}"
remote-management:
  secret-key: "${SECRET}"
api-keys:
  - client-one   # the first client
request-retry: 0
max-retry-interval: 0
gemini-api-key:
  - api-key: g-key-1   # first gemini key
    prefix: one
  - api-key: g-key-2
openai-compatibility:
  - name: mock
    base-url: "${mockUrl}/v1"
    api-key-entries:
      - api-key: up-key
    models:
      - name: up-model
        alias: m
# end
`;

async function call(path, { method = 'GET', body, query = '' } = {}) {
  const r = await fetch(`${proxy.url}/v0/management${path}${query}`, {
    method, headers: H, body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text };
}

const chat = (key) => fetch(`${proxy.url}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
  body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
});

const file = () => fs.readFileSync(proxy.configPath, 'utf8');

before(async () => {
  mock = await startMock({ models: ['up-model'] });
  proxy = await startProxy({ configText: config(mock.url) });
  // the secret-key write-back comes first; wait for it so later edits
  // compare against a settled file
  await until(() => !file().includes(SECRET), 'the secret-key hash');
});

after(async () => {
  // exit 0: a clean drain (and, under ASan, no leak at exit)
  if (proxy) assert.equal((await proxy.stop()).code, 0, proxy.stderr().slice(-2000));
  if (mock) await mock.close();
});

test('api-keys: PUT, PATCH by index and by old/new, DELETE by value and index; live', async () => {
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['client-one'] });
  assert.equal((await chat('client-two')).status, 401);

  let r = await call('/api-keys', { method: 'PATCH', body: { old: 'nope', new: 'client-two' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['client-one', 'client-two'] });
  assert.match(file(), /- client-one   # the first client/, 'the comment on the kept item stays');
  // applied live: the new key is let in once the reload is through
  await until(async () => (await chat('client-two')).status === 200, 'client-two to be accepted');

  r = await call('/api-keys', { method: 'PATCH', body: { index: 1, value: 'client-three' } });
  assert.equal(r.status, 200, r.text);
  r = await call('/api-keys', { method: 'PATCH', body: { old: 'client-one', new: 'client-1' } });
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['client-1', 'client-three'] });
  assert.equal((await call('/api-keys', { method: 'PATCH', body: { index: 7, value: 'x' } })).status, 404);

  r = await call('/api-keys', { method: 'DELETE', query: '?value=client-1' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['client-three'] });
  assert.equal((await call('/api-keys', { method: 'DELETE', query: '?value=gone' })).status, 404);

  r = await call('/api-keys', { method: 'PUT', body: { items: ['a-1', 'a-2'] } });
  assert.equal(r.status, 200, r.text);
  r = await call('/api-keys', { method: 'DELETE', query: '?index=0' });
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['a-2'] });
  r = await call('/api-keys', { method: 'PUT', body: ['client-one'] });
  assert.deepEqual((await call('/api-keys')).json, { 'api-keys': ['client-one'] });
  assert.equal((await call('/api-keys', { method: 'PUT', body: '{"items": [1]}' })).status, 400);
  await until(async () => (await chat('client-one')).status === 200, 'client-one to be accepted again');
  assert.equal((await chat('client-three')).status, 401);
});

test('gemini-api-key: PATCH by match edits that entry only; DELETE by api-key and index', async () => {
  const before = file();
  let r = await call('/gemini-api-key', { method: 'PATCH', body: { match: 'g-key-2', value: { prefix: 'two', 'base-url': 'https://example.test' } } });
  assert.equal(r.status, 200, r.text);
  const after = file();
  assert.ok(after.includes('  - api-key: g-key-1   # first gemini key\n    prefix: one\n'), after);
  assert.ok(after.startsWith(before.slice(0, before.indexOf('  - api-key: g-key-2'))), 'bytes before the patched entry are kept');
  const g = (await call('/gemini-api-key')).json['gemini-api-key'];
  assert.equal(g.length, 2);
  assert.equal(g[1]['api-key'], 'g-key-2');
  assert.equal(g[1].prefix, 'two');
  assert.equal(g[1]['base-url'], 'https://example.test');

  r = await call('/gemini-api-key', { method: 'PATCH', body: { index: 0, value: { 'base-url': 'not a url' } } });
  assert.equal(r.status, 422, r.text);
  assert.match(r.json.message, /gemini-api-key\.1\.base-url/);
  assert.equal((await call('/gemini-api-key', { method: 'PATCH', body: { match: 'nope', value: { prefix: 'x' } } })).status, 404);

  r = await call('/gemini-api-key', { method: 'DELETE', query: '?api-key=g-key-1' });
  assert.equal(r.status, 200, r.text);
  let list = (await call('/gemini-api-key')).json['gemini-api-key'];
  assert.deepEqual(list.map((e) => e['api-key']), ['g-key-2']);
  r = await call('/gemini-api-key', { method: 'PUT', body: [{ 'api-key': 'g-3', prefix: 'three' }, { 'api-key': 'g-4' }] });
  assert.equal(r.status, 200, r.text);
  r = await call('/gemini-api-key', { method: 'DELETE', query: '?index=1' });
  list = (await call('/gemini-api-key')).json['gemini-api-key'];
  assert.deepEqual(list.map((e) => [e['api-key'], e.prefix]), [['g-3', 'three']]);
});

test('openai-compatibility: matched by name; the models change live', async () => {
  let r = await call('/openai-compatibility');
  assert.equal(r.json['openai-compatibility'][0].name, 'mock');
  r = await call('/openai-compatibility', { method: 'PATCH', body: { match: 'mock', value: { models: [{ name: 'up-model', alias: 'm2' }] } } });
  assert.equal(r.status, 200, r.text);
  const served = async () => {
    const x = await fetch(`${proxy.url}/v1/models`, { headers: { authorization: 'Bearer client-one' } });
    return (await x.json()).data.map((m) => m.id);
  };
  await until(async () => (await served()).includes('m2'), 'model m2 to be served');
  assert.ok(!(await served()).includes('m'));
});

test('oauth-excluded-models and oauth-model-alias: PUT, PATCH a channel, DELETE it', async () => {
  let r = await call('/oauth-excluded-models', { method: 'PATCH', body: { provider: 'Claude', models: ['claude-3-*'] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/oauth-excluded-models')).json, { 'oauth-excluded-models': { claude: ['claude-3-*'] } });
  r = await call('/oauth-excluded-models', { method: 'PUT', body: { codex: ['gpt-4*'], claude: [] } });
  assert.equal(r.status, 200, r.text);
  r = await call('/oauth-excluded-models', { method: 'DELETE', query: '?provider=codex' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/oauth-excluded-models')).json['oauth-excluded-models'], { claude: [] });

  r = await call('/oauth-model-alias', { method: 'PATCH', body: { channel: 'codex', aliases: [{ name: 'gpt-5', alias: 'g5', fork: true }] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/oauth-model-alias')).json, { 'oauth-model-alias': { codex: [{ name: 'gpt-5', alias: 'g5', fork: true }] } });
  r = await call('/oauth-model-alias', { method: 'PATCH', body: { channel: 'codex', aliases: [] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/oauth-model-alias')).json, { 'oauth-model-alias': {} });
  assert.equal((await call('/oauth-model-alias', { method: 'DELETE', query: '?channel=codex' })).status, 404);
  assert.ok(file().includes('# routes e2e\n') && file().includes('# end\n'), 'comments stay');
});

// ---- credential files --------------------------------------------------

const CRED_MODEL = 'claude-sonnet-4-5-20250929';
const TOKEN = 'sk-ant-oat01-mgmt-e2e-token-SECRET-9931';

const claude = (key) => fetch(`${proxy.url}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
  body: JSON.stringify({ model: CRED_MODEL, messages: [{ role: 'user', content: 'hi' }] }),
});

function multipart(files) {
  const boundary = '----cpx-e2e-boundary-7731';
  const parts = files.map(([name, text]) => `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${name}"\r\nContent-Type: application/json\r\n\r\n${text}\r\n`);
  return { body: parts.join('') + `--${boundary}--\r\n`, type: `multipart/form-data; boundary=${boundary}` };
}

test('auth-files: upload (raw JSON) -> a request served by it -> list, download, disable, edit -> delete', async () => {
  assert.equal((await claude('client-one')).status, 502, 'no account serves the model yet');
  const cred = { type: 'claude', access_token: TOKEN, email: 'mgmt@example.com', base_url: mock.url };
  let r = await call('/auth-files', { method: 'POST', query: '?name=claude-mgmt@example.com.json', body: cred });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'ok' });
  const p = `${proxy.dir}/auths/claude-mgmt@example.com.json`;
  assert.equal(fs.statSync(p).mode & 0o777, 0o600);
  assert.deepEqual(JSON.parse(fs.readFileSync(p, 'utf8')), cred);

  // used at once: the upload rescanned the store
  const n0 = mock.requests.length;
  const used = await claude('client-one');
  assert.equal(used.status, 200, await used.clone().text());
  const q = mock.requests.slice(n0).find((x) => x.model === CRED_MODEL);
  assert.equal(q.headers.authorization, `Bearer ${TOKEN}`);

  r = await call('/auth-files');
  const e = r.json.files.find((f) => f.name === 'claude-mgmt@example.com.json');
  assert.ok(e, r.text);
  assert.equal(e.type, 'claude');
  assert.equal(e.email, 'mgmt@example.com');
  assert.equal(e.status, 'active');
  assert.equal(e.disabled, false);
  assert.equal(e.next_retry_after, null);
  assert.equal(typeof e.auth_index, 'number');

  r = await call('/auth-files/models', { query: '?name=claude-mgmt@example.com.json' });
  assert.equal(r.status, 200, r.text);
  assert.ok(r.json.models.some((m) => m.id === CRED_MODEL), r.text);
  const defs = await call('/model-definitions/claude');
  assert.ok(defs.json.models.some((m) => m.id === CRED_MODEL), defs.text);
  assert.deepEqual((await call('/model-definitions/no-such')).json.models, []);

  r = await call('/auth-files/download', { query: '?name=claude-mgmt@example.com.json' });
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, cred);
  assert.equal((await call('/auth-files/download', { query: '?name=../config.yaml' })).status, 400);
  assert.equal((await call('/auth-files/download', { query: '?name=nope.json' })).status, 404);

  r = await call('/auth-files/fields', { method: 'PATCH', body: { name: 'claude-mgmt@example.com.json', note: 'team A', priority: 5 } });
  assert.equal(r.status, 200, r.text);
  const edited = JSON.parse(fs.readFileSync(p, 'utf8'));
  assert.equal(edited.note, 'team A');
  assert.equal(edited.priority, 5);
  assert.deepEqual(Object.keys(edited).slice(0, 4), Object.keys(cred), 'field order kept');

  r = await call('/auth-files/status', { method: 'PATCH', body: { name: 'claude-mgmt@example.com.json', disabled: true } });
  assert.deepEqual(r.json, { status: 'ok', disabled: true });
  assert.equal((await claude('client-one')).status, 502, 'a disabled credential serves nothing');
  r = await call('/auth-files');
  assert.equal(r.json.files.find((f) => f.name === 'claude-mgmt@example.com.json').status, 'disabled');
  r = await call('/auth-files/status', { method: 'PATCH', body: { name: 'claude-mgmt@example.com.json', disabled: false } });
  assert.equal((await claude('client-one')).status, 200);

  r = await call('/auth-files', { method: 'DELETE', query: '?name=claude-mgmt@example.com.json' });
  assert.deepEqual(r.json, { status: 'ok' });
  assert.ok(!fs.existsSync(p));
  assert.equal((await claude('client-one')).status, 502, 'deleted: not used any more');
  assert.equal((await call('/auth-files', { method: 'DELETE', query: '?name=claude-mgmt@example.com.json' })).status, 404);
});

test('auth-files: multipart upload of several files lists the failures per file', async () => {
  const ok1 = JSON.stringify({ type: 'claude', access_token: 'tok-m1', base_url: mock.url });
  const ok2 = JSON.stringify({ type: 'codex', access_token: 'tok-m2' });
  const { body, type } = multipart([['claude-m1.json', ok1], ['codex-m2.json', ok2], ['bad.txt', ok1], ['claude-bad.json', '{"no":"type"}']]);
  const r = await fetch(`${proxy.url}/v0/management/auth-files`, { method: 'POST', headers: { ...H, 'content-type': type }, body });
  const j = await r.json();
  assert.equal(r.status, 207, JSON.stringify(j));
  assert.equal(j.status, 'partial');
  assert.deepEqual(j.files, ['claude-m1.json', 'codex-m2.json']);
  assert.deepEqual(j.failed.map((f) => f.name), ['bad.txt', 'claude-bad.json']);
  const names = (await call('/auth-files')).json.files.map((f) => f.name);
  assert.ok(names.includes('claude-m1.json') && names.includes('codex-m2.json'));
  assert.ok(!names.includes('claude-bad.json'));
  const one = multipart([['claude-m3.json', ok1]]);
  const r1 = await fetch(`${proxy.url}/v0/management/auth-files`, { method: 'POST', headers: { ...H, 'content-type': one.type }, body: one.body });
  assert.deepEqual(await r1.json(), { status: 'ok' });
  const d = await call('/auth-files', { method: 'DELETE', query: '?all=true' });
  assert.equal(d.json.deleted, 3);
  assert.deepEqual((await call('/auth-files')).json.files, []);
});

test('auth-files shows a cooldown and its next retry; POST /reset-cooldown (account, model) reopens it', async () => {
  const cred = { type: 'claude', access_token: 'tok-cool', base_url: mock.url };
  await call('/auth-files', { method: 'POST', query: '?name=claude-cool.json', body: cred });
  const cool = async () => {
    mock.once({ error: { status: 429, message: 'quota', headers: { 'retry-after': '600' } } });
    assert.equal((await claude('client-one')).status, 429);
    const n0 = mock.requests.length;
    assert.equal((await claude('client-one')).status, 429, 'cooling: answered without the upstream');
    assert.equal(mock.requests.length, n0);
  };
  await cool();
  let e = (await call('/auth-files')).json.files.find((f) => f.name === 'claude-cool.json');
  assert.equal(e.unavailable, false, 'its other models are still open');
  assert.notEqual(e.next_retry_after, null);
  const left = (Date.parse(e.next_retry_after) - Date.now()) / 1000;
  assert.ok(left > 500 && left <= 601, `next retry in ${left} s`);
  assert.deepEqual(e.cooldowns.map((c) => c.model), [CRED_MODEL]);

  let r = await call('/reset-cooldown', { method: 'POST', body: { account: 'claude-cool.json' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.cleared, 1);
  assert.equal((await claude('client-one')).status, 200);
  e = (await call('/auth-files')).json.files.find((f) => f.name === 'claude-cool.json');
  assert.equal(e.next_retry_after, null);

  await cool();
  r = await call('/reset-cooldown', { method: 'POST', body: { model: 'some-other-model' } });
  assert.equal(r.json.cleared, 0);
  assert.equal((await claude('client-one')).status, 429);
  r = await call('/reset-cooldown', { method: 'POST', body: { model: CRED_MODEL } });
  assert.equal(r.json.cleared, 1);
  assert.equal((await claude('client-one')).status, 200);
  assert.equal((await call('/reset-cooldown', { method: 'POST', body: '[1]' })).status, 400);
  await call('/auth-files', { method: 'DELETE', query: '?name=claude-cool.json' });
});

test('POST /api-call: an upstream call with a stored credential, $TOKEN$ replaced', async () => {
  await call('/auth-files', { method: 'POST', query: '?name=claude-api.json', body: { type: 'claude', access_token: 'tok-api-7', base_url: mock.url } });
  const idx = (await call('/auth-files')).json.files.find((f) => f.name === 'claude-api.json').auth_index;
  const n0 = mock.requests.length;
  let r = await call('/api-call', { method: 'POST', body: { auth_index: idx, method: 'GET', url: `${mock.url}/v1/models`, header: { Authorization: 'Bearer $TOKEN$', 'X-Extra': 'x' } } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.status_code, 200);
  assert.ok(Array.isArray(r.json.header['content-type']));
  assert.equal(typeof r.json.body, 'string');
  const q = mock.requests.slice(n0).at(-1);
  assert.equal(q.headers.authorization, 'Bearer tok-api-7');
  assert.equal(q.headers['x-extra'], 'x');
  r = await call('/api-call', { method: 'POST', body: { auth_index: 'claude-api.json', url: `${mock.url}/v1/models`, header: { Authorization: 'Bearer $TOKEN$' } } });
  assert.equal(r.json.status_code, 200);
  assert.equal((await call('/api-call', { method: 'POST', body: { auth_index: 99, url: `${mock.url}/x` } })).status, 404);
  assert.equal((await call('/api-call', { method: 'POST', body: { url: 'file:///etc/passwd' } })).status, 400);
  assert.equal((await call('/api-call', { method: 'POST', body: { url: `${mock.url}/x`, header: { A: '$TOKEN$' } } })).status, 400);
  await call('/auth-files', { method: 'DELETE', query: '?name=claude-api.json' });
});

test('no key or token used in these tests appears in the proxy log', async () => {
  const log = proxy.stderr() + proxy.stdout();
  for (const secret of [SECRET, TOKEN, 'tok-m1', 'tok-m2', 'tok-cool', 'tok-api-7', 'up-key', 'client-one', 'g-key-1']) {
    const at = log.indexOf(secret);
    assert.ok(at < 0, `${secret} is in the log: ${log.slice(Math.max(0, at - 200), at + 100)}`);
  }
  assert.ok(!/\$2b\$10\$/.test(log), 'the bcrypt hash is not logged');
});
