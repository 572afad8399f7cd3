// `cliproxy doctor`: what it reports for a config a user really has, and its
// exit code. The upstreams are a mock on loopback and a closed port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { startMock } from './lib/mock_upstream.mjs';
import { buildConfig, freePort, BIN } from './lib/proxy.mjs';

const T = (ms = 30000) => ({ timeout: ms });
let mock;
let dir;
before(async () => {
  mock = await startMock();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-doctor-'));
});
after(async () => {
  await mock?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

// Asynchronous: the mock upstream answers from this same process.
function doctor(configPath, ...flags) {
  return new Promise((resolve) => {
    const c = spawn(BIN, ['doctor', '-config', configPath, ...flags], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => c.kill('SIGKILL'), 20000);
    c.on('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

const iso = (offsetS) => new Date(Date.now() + offsetS * 1000).toISOString().replace(/\.\d+Z$/, 'Z');

function setup(name, { compat, creds = {}, port, apiKeys = ['k1'] }) {
  const d = path.join(dir, name);
  const authDir = path.join(d, 'auths');
  fs.mkdirSync(authDir, { recursive: true, mode: 0o700 });
  for (const [f, body] of Object.entries(creds)) {
    fs.writeFileSync(path.join(authDir, f), typeof body === 'string' ? body : JSON.stringify(body), { mode: 0o600 });
  }
  const p = path.join(d, 'config.yaml');
  fs.writeFileSync(p, buildConfig({ port, apiKeys, authDir, openaiCompat: compat }));
  return p;
}

test('a healthy setup: exit 0, each credential and the upstream reported ok', T(), async () => {
  const port = await freePort();
  const p = setup('ok', {
    port,
    compat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['sk-up-secret'], models: ['m1'] }],
    creds: {
      'claude-a@example.com.json': { type: 'claude', email: 'a@example.com', access_token: 'sk-ant-oat-secret',
        refresh_token: 'rt-secret', expired: iso(8 * 3600), last_refresh: iso(-60), base_url: mock.url },
    },
  });
  const r = await doctor(p);
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, new RegExp(`ok +port 127\\.0\\.0\\.1:${port} is free`));
  assert.match(r.out, /ok +claude-a@example\.com\.json \(a@example\.com\): claude, valid for [78] h/);
  const up = mock.url.replace(/\./g, '\\.');
  assert.match(r.out, new RegExp(`ok +upstream ${up} \\(.*openai_compat.*\\): reachable, HTTP \\d+`));
  // one probe per origin: the credential's base_url is the same mock
  assert.equal(r.out.split(`upstream ${mock.url} `).length - 1, 1);
  assert.match(r.out, /no problems found/);
  assert.doesNotMatch(r.out + r.err, /secret/);
});

test('problems: expired, disabled, unreadable and unsupported files, a closed upstream, a taken port', T(), async () => {
  const port = await freePort();
  const closed = await freePort(); // nothing listens there
  const busy = net.createServer();
  await new Promise((res) => busy.listen(port, '127.0.0.1', res));
  try {
    const p = setup('bad', {
      port,
      apiKeys: [],
      compat: [{ name: 'dead', baseUrl: `http://127.0.0.1:${closed}/v1`, keys: ['k'], models: ['m1'] }],
      creds: {
        'codex-b@example.com-plus.json': { type: 'codex', email: 'b@example.com', access_token: 'tok-secret',
          expired: iso(-7200), last_refresh: '2026-01-01T00:00:00Z', base_url: `${mock.url}/backend-api/codex` },
        'claude-off.json': { type: 'claude', access_token: 'x', disabled: true },
        'claude-broken.json': '{"type":"claude", "access_token": ',
        'qwen-c.json': { type: 'qwen', access_token: 'q' },
      },
    });
    const r = await doctor(p);
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.out, new RegExp(`error +port 127\\.0\\.0\\.1:${port} cannot be bound: Address already in use\\n +-> another process listens there`));
    assert.match(r.out, /error +codex-b@example\.com-plus\.json \(b@example\.com\): access token expired 2 h ago .*last refresh 2026-01-01T00:00:00Z\)\n +-> no refresh token: log in again with `cliproxy login codex`/);
    assert.match(r.out, /warn +claude-off\.json: disabled/);
    // the credential store skips an unreadable file itself, with the reason
    assert.match(r.err, /claude-broken\.json skipped/);
    assert.match(r.out, /warn +qwen-c\.json: type 'qwen' is not served yet/);
    assert.match(r.out, new RegExp(`error +upstream http://127\\.0\\.0\\.1:${closed} \\(openai_compat\\): .*\\n +-> check base-url`));
    assert.match(r.out, /warn +api-keys is empty/);
    assert.match(r.out, /\d problem\(s\), \d warning\(s\)/);
    assert.doesNotMatch(r.out + r.err, /secret/);
    // --offline skips the probes but still judges the rest
    const o = await doctor(p, '--offline');
    assert.equal(o.code, 1);
    assert.match(o.out, /2 upstream\(s\) not probed \(--offline\)/);
    assert.doesNotMatch(o.out, /upstream http:/);
  } finally {
    busy.close();
  }
});

test('a broken config: exit 1 with the file and line, and what to do', T(), async () => {
  const p = path.join(dir, 'broken.yaml');
  fs.writeFileSync(p, 'port: "eighty"\n');
  const r = await doctor(p);
  assert.equal(r.code, 1);
  assert.match(r.out, /error .*broken\.yaml:1.*port/);
  assert.match(r.out, /-> fix the file and line named above/);
  const missing = await doctor(path.join(dir, 'nope.yaml'));
  assert.equal(missing.code, 1);
  assert.match(missing.err, /not found/);
});
