// Issue 15: kill -9 in the middle of writes, against the real binary.
// - Usage store (SQLite, runtime/state/cpx_usage.c): a kill -9 while requests
//   stream records into small, frequent batches. After each kill the
//   database passes PRAGMA integrity_check, holds at least every record the
//   process had reported written before the kill (and no half record), and
//   the restarted proxy opens it and appends to it. Three rounds.
// - Credential files (cpx_store_write_file: tmp + fsync + rename + dir
//   fsync): a kill -9 while the management API rewrites one credential,
//   alternating two ~512 KiB versions. After each kill the file is exactly
//   one of the versions, never partial, and the restarted proxy lists only
//   that file (a temporary file left by the kill is never taken for a
//   credential). Three rounds.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import parsePrometheus from 'parse-prometheus-text-format';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const KEY = 'sk-faults2-e2e';
const MKEY = 'metrics-faults2-key';
const SECRET = 'mgmt-faults2-secret-Yp27';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let mock, tmp;
before(async () => {
  mock = await startMock();
  mock.reply({ text: 'hello', usage: { input: 5, output: 3 } });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-faults2-'));
});
after(async () => {
  await mock.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// A config of our own, so that every restart sees the same auth dir and db.
function config({ authDir, db }) {
  return `host: "127.0.0.1"
port: \${PORT}
auth-dir: "${authDir}"
debug: false
request-retry: 0
api-keys:
  - "${KEY}"
remote-management:
  allow-remote: false
  secret-key: "${SECRET}"
openai-compatibility:
  - name: mock
    base-url: "${mock.url}/v1"
    api-key-entries:
      - api-key: up-1
    models:
      - name: up-model
        alias: m
usage:
  enabled: true
  path: "${db}"
  batch-size: 2
  flush-interval-ms: 10
metrics:
  enabled: true
  key: "${MKEY}"
`;
}

const sql = (db, q) => execFileSync('sqlite3', [db, q], { encoding: 'utf8' }).trim();

async function written(p) {
  const r = await fetch(`${p.url}/metrics`, { headers: { authorization: `Bearer ${MKEY}` } });
  const fam = parsePrometheus(await r.text()).find((f) => f.name === 'cliproxy_usage_records_total');
  return (fam?.metrics || []).filter((m) => m.labels?.result === 'written').reduce((a, m) => a + Number(m.value), 0);
}

const chat = () => JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });

async function killed(p) {
  p.child.kill('SIGKILL');
  await new Promise((r) => (p.exited() ? r() : p.child.once('exit', r)));
}

test('kill -9 during usage writes: the database opens, is consistent and keeps every record reported written', { timeout: 120000 }, async () => {
  const authDir = path.join(tmp, 'usage-auths');
  fs.mkdirSync(authDir, { mode: 0o700 });
  const db = path.join(tmp, 'usage.db');
  let before = 0;
  for (let round = 0; round < 3; round++) {
    const p = await startProxy({ configText: config({ authDir, db }) });
    if (round > 0) {
      // The restarted proxy opened the database it was killed on.
      assert.equal(sql(db, 'PRAGMA integrity_check'), 'ok');
    }
    // 8 clients in a loop; the writer writes a batch every 2 records.
    let stop = false;
    const load = Array.from({ length: 8 }, async () => {
      while (!stop) {
        try {
          await fetch(`${p.url}/v1/chat/completions`, {
            method: 'POST', body: chat(),
            headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
          }).then((r) => r.text());
        } catch { /* the kill cuts the last ones */ }
      }
    });
    // Let it write some batches, note the last count it reported, and kill
    // it while the load (and so the writer) is still running.
    let seen = 0;
    const end = Date.now() + 20000;
    while (seen < 40 && Date.now() < end) { seen = await written(p); await sleep(20); }
    assert.ok(seen >= 40, `the writer wrote records (${seen})`);
    seen = await written(p);
    await killed(p);
    stop = true;
    await Promise.all(load);
    fs.rmSync(p.dir, { recursive: true, force: true });

    assert.equal(sql(db, 'PRAGMA integrity_check'), 'ok', `round ${round}: integrity`);
    const count = Number(sql(db, 'select count(*) from requests'));
    assert.ok(count >= before + seen, `round ${round}: ${count} rows, at least ${before} + ${seen} reported written`);
    // Whole records only: every row has what a record always has.
    assert.equal(sql(db, "select count(*) from requests where time is null or status is null or model is null or endpoint is null"), '0');
    assert.equal(sql(db, "select count(*) from requests where status = 200 and (input != 5 or output != 3)"), '0');
    before = count;
  }
  // And after the last kill it still takes new records.
  const p = await startProxy({ configText: config({ authDir, db }) });
  const r = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST', body: chat(), headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
  });
  assert.equal(r.status, 200);
  const end = Date.now() + 10000;
  while ((await written(p)) < 1 && Date.now() < end) await sleep(20);
  await p.stop();
  assert.equal(Number(sql(db, 'select count(*) from requests')), before + 1);
});

test('kill -9 during a credential write: the file is the old or the new version, never partial, and no temp file becomes a credential', { timeout: 120000 }, async (t) => {
  let cut = 0; // rounds whose kill left a temporary file: it landed mid-write
  const authDir = path.join(tmp, 'cred-auths');
  fs.mkdirSync(authDir, { mode: 0o700 });
  const db = path.join(tmp, 'cred-usage.db');
  const NAME = 'codex-kill@example.com.json';
  const version = (v) => JSON.stringify({
    type: 'codex', email: 'kill@example.com', access_token: `tok-${v}`, refresh_token: `ref-${v}`,
    version: v, padding: v.repeat(512 * 1024),
  });
  const A = version('A');
  const B = version('B');
  fs.writeFileSync(path.join(authDir, NAME), A, { mode: 0o600 });
  const mgmt = (p, pth, init = {}) => fetch(`${p.url}/v0/management${pth}`, {
    ...init, headers: { 'X-Management-Key': SECRET, ...(init.headers || {}) },
  });
  for (let round = 0; round < 3; round++) {
    const p = await startProxy({ configText: config({ authDir, db }) });
    // The restarted proxy lists exactly the one credential.
    const list = await (await mgmt(p, '/auth-files')).json();
    assert.deepEqual(list.files.map((f) => f.name), [NAME], `round ${round}: ${JSON.stringify(list.files.map((f) => f.name))}`);
    let stop = false;
    let okWrites = 0;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await mgmt(p, `/auth-files?name=${encodeURIComponent(NAME)}`, {
            method: 'POST', body: i % 2 ? A : B, headers: { 'content-type': 'application/json' },
          });
          if (r.status === 200) okWrites++;
          else assert.fail(`upload: ${r.status} ${await r.text()}`);
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e;
          /* the kill cuts the last one */
        }
      }
    })();
    const end = Date.now() + 20000;
    while (okWrites < 5 && Date.now() < end) await sleep(5);
    assert.ok(okWrites >= 5, `uploads went through (${okWrites})`);
    await sleep(round * 7); // different phases of a write
    await killed(p);
    stop = true;
    await writer;
    fs.rmSync(p.dir, { recursive: true, force: true });

    const now = fs.readFileSync(path.join(authDir, NAME), 'utf8');
    assert.ok(now === A || now === B, `round ${round}: the file is one whole version (${now.length} bytes)`);
    assert.equal(fs.statSync(path.join(authDir, NAME)).mode & 0o777, 0o600);
    // What else the kill left: the writer's temporary file and the
    // credential's lock file at most, both dot files the store never loads.
    for (const f of fs.readdirSync(authDir)) {
      if (f === NAME) continue;
      if (f.includes('.tmp.')) cut++;
      assert.match(f, /^\.codex-kill@example\.com\.json\.(tmp\.|lock$)/, `round ${round}: stray ${f}`);
    }
  }
  t.diagnostic(`${cut} of 3 kills left a temporary file (landed mid-write)`);
  const p = await startProxy({ configText: config({ authDir, db }) });
  const list = await (await mgmt(p, '/auth-files')).json();
  assert.deepEqual(list.files.map((f) => f.name), [NAME]);
  await p.stop();
});
