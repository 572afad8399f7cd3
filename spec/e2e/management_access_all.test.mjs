// Issue 13, "every route's auth rules": each route the management API
// mounts (the list comes from rt.management itself, so a new route is
// covered without editing this file) answers 401 without a key and with a
// wrong one, 403 to a non-loopback client without allow-remote even with
// the right key, and 403 to a banned address even with the right key; none
// of those changes config.yaml or auth-dir.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { BIN, ROOT, startProxy } from './lib/proxy.mjs';

const SECRET = 'access-all-secret-8128';
let proxy, routes, lan;

// "METHOD /path" of every mounted route, from the Lua modules themselves.
function mountedRoutes() {
  const script = `package.path = "${ROOT}/lua/?.lua;${ROOT}/lua/?/init.lua;" .. package.path
package.cpath = "${path.dirname(BIN)}/?.so;${ROOT}/build/?.so;" .. package.cpath
local m = require("rt.management")
assert(m.init({ config = { ["remote-management"] = { ["secret-key"] = "" } }, _file = "/nonexistent.yaml" }))
io.write(m._routes())`;
  const r = spawnSync('luajit', ['-e', script], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return null;
  return r.stdout.split('\n').filter(Boolean).map((l) => {
    const [method, p] = l.split(' ');
    return { method, path: p.replace(/:[A-Za-z_]+/g, 'x') };
  });
}

function request(method, p, { key, localAddress, host = '127.0.0.1' } = {}) {
  return new Promise((resolve, reject) => {
    const body = method === 'GET' || method === 'DELETE' ? undefined : '{}';
    const req = http.request({ host, port: proxy.port, path: `/v0/management${p}`, method, localAddress,
      headers: { ...(key ? { 'X-Management-Key': key } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}) } },
    (res) => {
      let t = '';
      res.on('data', (c) => { t += c; });
      res.on('end', () => {
        let json = null;
        try { json = JSON.parse(t); } catch {}
        resolve({ status: res.statusCode, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

// A fresh loopback address per failing request: five failures ban one.
let seq = 0;
const fresh = () => { seq++; return `127.1.${Math.floor(seq / 250)}.${(seq % 250) + 1}`; };

const snapshot = () => {
  const dir = path.join(proxy.dir, 'auths');
  return JSON.stringify([fs.readFileSync(proxy.configPath, 'utf8'),
    fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')])]);
};

before(async () => {
  routes = mountedRoutes();
  lan = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
  proxy = await startProxy({ extra: { host: '0.0.0.0', 'remote-management': { 'secret-key': SECRET } } });
  fs.writeFileSync(path.join(proxy.dir, 'auths', 'claude-a@example.com.json'),
    JSON.stringify({ type: 'claude', access_token: 'x', email: 'a@example.com' }), { mode: 0o600 });
});

after(async () => {
  if (proxy) assert.equal((await proxy.stop()).code, 0);
});

test('every mounted route: 401 without a key and with a wrong key', async (t) => {
  if (!routes) return t.skip('luajit with the cpx module is not available to list the routes');
  assert.ok(routes.length > 100, `${routes.length} routes`);
  for (const want of ['POST /vertex/import', 'GET /qwen-auth-url', 'POST /iflow-auth-url', 'PATCH /ampcode/model-mappings']) {
    assert.ok(routes.some((r) => `${r.method} ${r.path}` === want), `${want} is mounted`);
  }
  const before = snapshot();
  for (const r of routes) {
    const none = await request(r.method, r.path, { localAddress: fresh() });
    assert.equal(none.status, 401, `${r.method} ${r.path} without a key`);
    assert.deepEqual(none.json, { error: 'missing management key' });
    const wrong = await request(r.method, r.path, { key: 'not-the-key', localAddress: fresh() });
    assert.equal(wrong.status, 401, `${r.method} ${r.path} with a wrong key`);
    assert.deepEqual(wrong.json, { error: 'invalid management key' });
  }
  assert.equal(snapshot(), before, 'nothing changed');
});

test('every mounted route: 403 from a non-loopback address without allow-remote, the right key too', async (t) => {
  if (!routes) return t.skip('luajit with the cpx module is not available to list the routes');
  if (!lan) return t.skip('this machine has no non-loopback IPv4 address');
  const before = snapshot();
  for (const r of routes) {
    const res = await request(r.method, r.path, { key: SECRET, host: lan });
    assert.equal(res.status, 403, `${r.method} ${r.path} from ${lan}`);
    assert.deepEqual(res.json, { error: 'remote management disabled' });
  }
  assert.equal(snapshot(), before, 'nothing changed');
});

test('every mounted route: 403 to a banned address, the right key too', async (t) => {
  if (!routes) return t.skip('luajit with the cpx module is not available to list the routes');
  const banned = '127.2.0.1';
  for (let i = 0; i < 5; i++) assert.equal((await request('GET', '/debug', { key: 'nope', localAddress: banned })).status, 401);
  const before = snapshot();
  for (const r of routes) {
    const res = await request(r.method, r.path, { key: SECRET, localAddress: banned });
    assert.equal(res.status, 403, `${r.method} ${r.path} banned`);
    assert.match(res.json.error, /^IP banned due to too many failed attempts/);
  }
  assert.equal(snapshot(), before, 'nothing changed');
  // another address is not affected
  assert.equal((await request('GET', '/debug', { key: SECRET, localAddress: '127.2.0.2' })).status, 200);
});
