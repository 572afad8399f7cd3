// Issue 13, the ampcode management routes (fact sheet §1.4 "Amp settings",
// §2 `ampcode.*`): each setting read and written in CLIProxyAPI v6's shapes,
// validated like a file load, written into config.yaml with its comments
// kept, and applied by the reload; the access rules on them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';
import { mgmtCall } from './lib/mgmt.mjs';

const SECRET = 'amp-mgmt-secret-4471';
const CONFIG = `# ampcode e2e: comments must survive
host: "127.0.0.1"
port: \${PORT}
auth-dir: "\${AUTH_DIR}"
remote-management:
  secret-key: "${SECRET}" # hashed on load
ampcode:
  # where Amp's own routes would go
  upstream-url: "https://ampcode.example"
  model-mappings:
    - from: "claude-opus-4"   # keep me
      to: "claude-sonnet-4"
api-keys:
  - "sk-amp-client"
`;

let proxy;
const call = (p, { key = SECRET, ...o } = {}) => mgmtCall(proxy.url, p, { key, ...o });
const file = () => fs.readFileSync(proxy.configPath, 'utf8');

before(async () => {
  proxy = await startProxy({ configText: CONFIG });
  // the plaintext key's hash is written back first (a reload of its own)
  await until(() => !file().includes(SECRET), 'the secret-key hash');
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
});

test('GET /ampcode and each setting in CLIProxyAPI shapes', async () => {
  const a = await call('/ampcode');
  assert.equal(a.status, 200, a.text);
  assert.equal(a.json.ampcode['upstream-url'], 'https://ampcode.example');
  assert.deepEqual(a.json.ampcode['model-mappings'], [{ from: 'claude-opus-4', to: 'claude-sonnet-4', regex: false }]);
  assert.deepEqual((await call('/ampcode/upstream-url')).json, { 'upstream-url': 'https://ampcode.example' });
  assert.deepEqual((await call('/ampcode/upstream-api-key')).json, { 'upstream-api-key': '' });
  assert.deepEqual((await call('/ampcode/restrict-management-to-localhost')).json,
    { 'restrict-management-to-localhost': false });
  assert.deepEqual((await call('/ampcode/force-model-mappings')).json, { 'force-model-mappings': false });
  assert.deepEqual((await call('/ampcode/model-mappings')).json,
    { 'model-mappings': [{ from: 'claude-opus-4', to: 'claude-sonnet-4' }] });
  assert.deepEqual((await call('/ampcode/upstream-api-keys')).json, { 'upstream-api-keys': [] });
});

test('scalars: PUT/PATCH {"value"} write config.yaml in place; DELETE clears; bad values refused', async () => {
  for (const [p, v] of [['/ampcode/upstream-url', 'https://amp.mirror.example'], ['/ampcode/upstream-api-key', 'amp-UPSTREAM-key'],
    ['/ampcode/restrict-management-to-localhost', true], ['/ampcode/force-model-mappings', true]]) {
    const r = await call(p, { method: p.endsWith('key') ? 'PATCH' : 'PUT', body: { value: v } });
    assert.equal(r.status, 200, `${p}: ${r.text}`);
    assert.deepEqual(r.json, { status: 'ok' });
    assert.deepEqual((await call(p)).json, { [p.split('/').pop()]: v });
  }
  const text = file();
  assert.match(text, /# ampcode e2e: comments must survive/);
  assert.match(text, /# where Amp's own routes would go/);
  assert.match(text, /from: "claude-opus-4" {3}# keep me/);
  assert.match(text, /upstream-url: "?https:\/\/amp\.mirror\.example"?/);
  assert.match(text, /force-model-mappings: true/);

  const bad = await call('/ampcode/upstream-url', { method: 'PUT', body: { value: 'ftp://nope' } });
  assert.equal(bad.status, 422, bad.text);
  assert.match(bad.json.message, /ampcode\.upstream-url/);
  assert.equal((await call('/ampcode/force-model-mappings', { method: 'PUT', body: { value: 'yes' } })).status, 400);
  assert.equal((await call('/ampcode/upstream-url', { method: 'PUT', body: 'not json' })).status, 400);
  assert.equal((await call('/ampcode/force-model-mappings', { method: 'PUT', body: 'not json' })).status, 400);
  assert.deepEqual((await call('/ampcode/force-model-mappings')).json, { 'force-model-mappings': true }, 'unchanged');
  assert.equal((await call('/ampcode/force-model-mappings', { method: 'DELETE' })).status, 404, 'no DELETE for a boolean');

  assert.deepEqual((await call('/ampcode/upstream-api-key', { method: 'DELETE' })).json, { status: 'ok' });
  assert.deepEqual((await call('/ampcode/upstream-api-key')).json, { 'upstream-api-key': '' });
  // applied live: GET /config (the reloaded config) follows
  await until(async () => (await call('/config')).json.ampcode['upstream-url'] === 'https://amp.mirror.example',
    'the reload');
});

test('model-mappings: PATCH merges by from, PUT replaces, DELETE by from or all', async () => {
  let r = await call('/ampcode/model-mappings', { method: 'PATCH',
    body: { value: [{ from: 'claude-opus-4', to: 'gemini-2.5-pro' }, { from: ' gpt-5 ', to: 'claude-sonnet-4', regex: true }] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/ampcode/model-mappings')).json['model-mappings'],
    [{ from: 'claude-opus-4', to: 'gemini-2.5-pro' }, { from: 'gpt-5', to: 'claude-sonnet-4', regex: true }]);
  assert.match(file(), /# keep me/, 'the entry\'s other bytes stay');
  assert.equal((await call('/ampcode/model-mappings', { method: 'PATCH', body: { value: [{ from: 'x' }] } })).status, 400);
  r = await call('/ampcode/model-mappings', { method: 'DELETE', body: { value: ['gpt-5'] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/ampcode/model-mappings')).json['model-mappings'], [{ from: 'claude-opus-4', to: 'gemini-2.5-pro' }]);
  assert.equal((await call('/ampcode/model-mappings', { method: 'DELETE', body: { value: ['none'] } })).status, 404);
  r = await call('/ampcode/model-mappings', { method: 'PUT', body: { value: [{ from: 'a', to: 'b' }, { from: 'c', to: 'd' }] } });
  assert.equal(r.status, 200, r.text);
  assert.equal((await call('/ampcode/model-mappings')).json['model-mappings'].length, 2);
  assert.equal((await call('/ampcode/model-mappings', { method: 'DELETE' })).status, 200);
  assert.deepEqual((await call('/ampcode/model-mappings')).json, { 'model-mappings': [] });
});

test('upstream-api-keys: trimmed, empty keys dropped, merged by upstream-api-key', async () => {
  let r = await call('/ampcode/upstream-api-keys', { method: 'PUT',
    body: { value: [{ 'upstream-api-key': ' up-ONE ', 'api-keys': [' sk-a ', '', 'sk-b'] }, { 'upstream-api-key': '' }] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/ampcode/upstream-api-keys')).json['upstream-api-keys'],
    [{ 'upstream-api-key': 'up-ONE', 'api-keys': ['sk-a', 'sk-b'] }]);
  r = await call('/ampcode/upstream-api-keys', { method: 'PATCH',
    body: { value: [{ 'upstream-api-key': 'up-ONE', 'api-keys': ['sk-c'] }, { 'upstream-api-key': 'up-TWO', 'api-keys': ['sk-d'] }] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/ampcode/upstream-api-keys')).json['upstream-api-keys'],
    [{ 'upstream-api-key': 'up-ONE', 'api-keys': ['sk-c'] }, { 'upstream-api-key': 'up-TWO', 'api-keys': ['sk-d'] }]);
  r = await call('/ampcode/upstream-api-keys', { method: 'DELETE', body: { value: ['up-ONE'] } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await call('/ampcode')).json.ampcode['upstream-api-keys'], [{ 'upstream-api-key': 'up-TWO', 'api-keys': ['sk-d'] }]);
  assert.equal((await call('/ampcode/upstream-api-keys', { method: 'PUT', body: { value: [{ 'api-keys': [] }] } })).status, 400);
});

test('the ampcode routes: no key and a wrong key 401 (from their own addresses), nothing written', async () => {
  const before = file();
  let n = 40;
  for (const [method, p, body] of [['GET', '/ampcode'], ['PUT', '/ampcode/upstream-url', { value: 'https://evil.example' }],
    ['DELETE', '/ampcode/model-mappings'], ['PATCH', '/ampcode/upstream-api-keys', { value: [{ 'upstream-api-key': 'x' }] }]]) {
    for (const key of [null, 'wrong-key']) {
      const r = await new Promise((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: proxy.port, path: `/v0/management${p}`, method,
          localAddress: `127.0.0.${n++}`, headers: key ? { 'X-Management-Key': key } : {} }, (res) => {
          let t = '';
          res.on('data', (c) => { t += c; });
          res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(t) }));
        });
        req.on('error', reject);
        req.end(body && JSON.stringify(body));
      });
      assert.equal(r.status, 401, `${method} ${p} key=${key}`);
      assert.deepEqual(r.json, { error: key ? 'invalid management key' : 'missing management key' });
    }
  }
  assert.equal(file(), before);
  assert.ok(!proxy.stderr().includes('amp-UPSTREAM-key'), 'the upstream key is not logged');
});

test('without a secret-key the ampcode routes do not exist (404)', async () => {
  const p = await startProxy({ extra: { ampcode: { 'upstream-url': 'https://ampcode.example' } } });
  try {
    const r = await fetch(`${p.url}/v0/management/ampcode`, { headers: { 'X-Management-Key': 'anything' } });
    assert.equal(r.status, 404);
    await r.text();
  } finally {
    assert.equal((await p.stop()).code, 0);
  }
});
