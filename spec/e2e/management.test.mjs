// Issue 13, management API: the access rules of /v0/management (CLIProxyAPI's
// handler.go Middleware) and config edits that keep config.yaml's other bytes.
//
// The remote-address rule needs a client address that is not loopback: the
// test connects to one of this machine's own non-loopback IPv4 addresses
// (os.networkInterfaces) with the proxy bound to 0.0.0.0. A machine with none
// skips those cases (and says so); there is no test hook that could fake it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { startProxy } from './lib/proxy.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SECRET = 'mgmt-e2e-secret-Zq81';

const CONFIG = `# management e2e config: comments must survive
host: "0.0.0.0"
port: \${PORT}   # the port
auth-dir: "\${AUTH_DIR}"

remote-management:
  # loopback only
  allow-remote: false
  secret-key: "${SECRET}"   # plaintext on purpose: hashed at load

debug: false            # flipped by the test
request-retry: 0
routing:
  strategy: round-robin # the default
# the end
`;

function nonLoopbackAddress() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) {
      if (a.family === 'IPv4' && !a.internal) return a.address;
    }
  }
  return null;
}

async function call(base, path, { method = 'GET', headers = {}, body } = {}) {
  const r = await fetch(`${base}/v0/management${path}`, { method, headers, body });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, text, json, headers: r.headers };
}

const key = (k = SECRET) => ({ 'X-Management-Key': k });
const bearer = (k = SECRET) => ({ Authorization: `Bearer ${k}` });

// Polls until fn() is truthy; the config watcher reloads asynchronously.
async function until(fn, what, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

let proxy, original;

before(async () => {
  proxy = await startProxy({ configText: CONFIG });
  original = CONFIG.replaceAll('${PORT}', proxy.port).replaceAll('${AUTH_DIR}', `${proxy.dir}/auths`);
});

after(async () => {
  // exit 0: a clean drain (and, under ASan, no leak at exit)
  if (proxy) assert.equal((await proxy.stop()).code, 0, proxy.stderr().slice(-2000));
});

test('the plaintext secret-key is replaced by its bcrypt hash, every other byte kept', async () => {
  const text = await until(() => {
    const t = fs.readFileSync(proxy.configPath, 'utf8');
    return t.includes(SECRET) ? null : t;
  }, 'the hash to be written back');
  const m = text.match(/secret-key: (\$2b\$10\$[./A-Za-z0-9]{53})/);
  assert.ok(m, `no bcrypt hash in:\n${text}`);
  assert.equal(text, original.replace(`"${SECRET}"`, m[1]));
  assert.equal(fs.statSync(proxy.configPath).mode & 0o777, 0o644 & ~process.umask() & 0o777);
});

test('no key: 401 missing management key, in CLIProxyAPI shape with the version headers', async () => {
  const r = await call(proxy.url, '/debug');
  assert.equal(r.status, 401);
  assert.deepEqual(r.json, { error: 'missing management key' });
  assert.ok(r.headers.get('x-cpa-version'));
});

test('wrong key: 401 invalid management key, in either header', async () => {
  for (const h of [key('nope'), bearer('nope')]) {
    const r = await call(proxy.url, '/debug', { headers: h });
    assert.equal(r.status, 401);
    assert.deepEqual(r.json, { error: 'invalid management key' });
  }
});

test('right key in Authorization: Bearer and in X-Management-Key', async () => {
  for (const h of [key(), bearer(), { Authorization: SECRET }]) {
    const r = await call(proxy.url, '/debug', { headers: h });
    assert.equal(r.status, 200, r.text);
    assert.equal(typeof r.json.debug, 'boolean');
  }
});

test('unknown management path with the right key: 404', async () => {
  const r = await call(proxy.url, '/no-such-route', { headers: key() });
  assert.equal(r.status, 404);
});

test('a non-loopback client is refused without allow-remote, even with the right key', async (t) => {
  const addr = nonLoopbackAddress();
  if (!addr) return t.skip('this machine has no non-loopback IPv4 address');
  const r = await call(`http://${addr}:${proxy.port}`, '/debug', { headers: key() });
  assert.equal(r.status, 403);
  assert.deepEqual(r.json, { error: 'remote management disabled' });
});

test('PUT /debug writes only that value into config.yaml and applies it live', async () => {
  const before = fs.readFileSync(proxy.configPath, 'utf8');
  const r = await call(proxy.url, '/debug', { method: 'PUT', headers: key(), body: JSON.stringify({ value: true }) });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'ok' });
  const after = fs.readFileSync(proxy.configPath, 'utf8');
  assert.equal(after, before.replace('debug: false            #', 'debug: true            #'));
  // live: the reload raised the log level (debug lines appear)
  await until(() => /\[debug\]/.test(proxy.stderr() + proxy.stdout()), 'debug logging after the reload');
  const g = await call(proxy.url, '/debug', { headers: key() });
  assert.deepEqual(g.json, { debug: true });
  // a wrong type is refused and writes nothing
  const bad = await call(proxy.url, '/debug', { method: 'PATCH', headers: key(), body: '{"value":"yes"}' });
  assert.equal(bad.status, 400);
  assert.equal(fs.readFileSync(proxy.configPath, 'utf8'), after);
});

test('PATCH /routing/strategy: validated like a file load, kept comments', async () => {
  const bad = await call(proxy.url, '/routing/strategy', { method: 'PATCH', headers: key(), body: '{"value":"random"}' });
  assert.equal(bad.status, 422, bad.text);
  assert.equal(bad.json.error, 'invalid_config');
  assert.match(bad.json.message, /routing\.strategy/);
  const before = fs.readFileSync(proxy.configPath, 'utf8');
  const ok = await call(proxy.url, '/routing/strategy', { method: 'PATCH', headers: key(), body: '{"value":"fill-first"}' });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(fs.readFileSync(proxy.configPath, 'utf8'), before.replace('strategy: round-robin #', 'strategy: fill-first #'));
  const g = await call(proxy.url, '/routing/strategy', { headers: key() });
  assert.deepEqual(g.json, { strategy: 'fill-first' });
});

test('GET /config.yaml is the file; PUT /config.yaml validates (error and line) and writes as sent', async () => {
  const g = await call(proxy.url, '/config.yaml', { headers: key() });
  assert.equal(g.status, 200);
  assert.match(g.headers.get('content-type'), /yaml/);
  assert.equal(g.text, fs.readFileSync(proxy.configPath, 'utf8'));

  const broken = g.text.replace('request-retry: 0', 'request-retry: [0');
  const r1 = await call(proxy.url, '/config.yaml', { method: 'PUT', headers: key(), body: broken });
  assert.equal(r1.status, 400, r1.text);
  assert.equal(r1.json.error, 'invalid_yaml');
  const invalid = g.text.replace('request-retry: 0', 'request-retry: "many"');
  const r2 = await call(proxy.url, '/config.yaml', { method: 'PUT', headers: key(), body: invalid });
  assert.equal(r2.status, 422, r2.text);
  assert.equal(r2.json.error, 'invalid_config');
  const line = invalid.split('\n').findIndex((l) => l.startsWith('request-retry:')) + 1;
  assert.ok(r2.json.message.includes(`config.yaml:${line}: request-retry: expected an integer`), r2.json.message);
  assert.equal(fs.readFileSync(proxy.configPath, 'utf8'), g.text, 'a refused PUT changes nothing');

  const edited = g.text.replace('request-retry: 0', 'request-retry: 2 # set over PUT');
  const r3 = await call(proxy.url, '/config.yaml', { method: 'PUT', headers: key(), body: edited });
  assert.equal(r3.status, 200, r3.text);
  assert.deepEqual(r3.json, { ok: true, changed: ['config'] });
  assert.equal(fs.readFileSync(proxy.configPath, 'utf8'), edited);
  const c = await until(async () => {
    const x = await call(proxy.url, '/config', { headers: key() });
    return x.json && x.json['request-retry'] === 2 ? x : null;
  }, 'GET /config to show the new value');
  assert.equal(c.json['remote-management']['secret-key'], undefined, 'the hash is not handed out');
});

test('without secret-key or MANAGEMENT_PASSWORD the API does not exist: 404', async () => {
  const p = await startProxy({ apiKeys: [] });
  try {
    for (const h of [{}, key()]) {
      const r = await call(p.url, '/debug', { headers: h });
      assert.equal(r.status, 404);
    }
  } finally {
    assert.equal((await p.stop()).code, 0, p.stderr().slice(-2000));
  }
});

test('MANAGEMENT_PASSWORD alone enables the API and allows remote clients', async () => {
  const pw = 'env-password-77';
  const p = await startProxy({ env: { MANAGEMENT_PASSWORD: pw }, extra: { host: '0.0.0.0' } });
  try {
    assert.equal((await call(p.url, '/debug', { headers: key(pw) })).status, 200);
    assert.equal((await call(p.url, '/debug', { headers: key('bad') })).status, 401);
    const addr = nonLoopbackAddress();
    if (addr) {
      const r = await call(`http://${addr}:${p.port}`, '/debug', { headers: bearer(pw) });
      assert.equal(r.status, 200, r.text);
    }
  } finally {
    assert.equal((await p.stop()).code, 0, p.stderr().slice(-2000));
  }
});

test('5 failures from one address ban it for 30 minutes, the right key included', async () => {
  const p = await startProxy({ extra: { 'remote-management': { 'secret-key': SECRET } } });
  try {
    // a missing key counts as a failure too
    assert.equal((await call(p.url, '/debug')).status, 401);
    for (let i = 0; i < 4; i++) {
      assert.equal((await call(p.url, '/debug', { headers: key(`wrong-${i}`) })).status, 401);
    }
    const r = await call(p.url, '/debug', { headers: key() });
    assert.equal(r.status, 403);
    assert.match(r.json.error, /^IP banned due to too many failed attempts\. Try again in (30m0s|29m\d+s)$/);
    // the ban outlives a reload (it lives in C, not in the Lua generation)
    process.kill(p.pid, 'SIGHUP');
    await until(() => /reloaded \(SIGHUP\)/.test(p.stderr() + p.stdout()), 'the SIGHUP reload');
    assert.equal((await call(p.url, '/debug', { headers: key() })).status, 403);
  } finally {
    assert.equal((await p.stop()).code, 0, p.stderr().slice(-2000));
  }
});
