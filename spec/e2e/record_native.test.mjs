// The C relay's request records without Lua (runtime/lua/cpx_lane_lua.c):
// while only the built-in subscribers listen (access log, metrics, usage
// store), a relayed request's record goes to them from C; a Lua subscriber
// (here rt.otel) makes the relay hand its records to rt.record.lane as
// before. The same requests through both must give the same stored
// records (every field but the id and the times) and the same counters.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const KEY = 'sk-record-native-e2e';
const MKEY = 'record-native-metrics';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let mock;
let collector;
let tmp;
let spans = 0;

before(async () => {
  mock = await startMock();
  mock.reply({ text: 'hello there', usage: { input: 11, output: 7, cached: 2 } });
  collector = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => { spans++; res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
  });
  await new Promise((r) => collector.listen(0, '127.0.0.1', r));
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-record-native-'));
});

after(async () => {
  await mock.close();
  await new Promise((r) => collector.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});

function opts(db, extra = {}) {
  return {
    apiKeys: [KEY],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-1'], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: {
      workers: 1,
      usage: { enabled: true, path: db, 'flush-interval-ms': 50 },
      metrics: { enabled: true, key: MKEY },
      'claude-api-key': [{ 'api-key': 'cl-1', 'base-url': mock.url, models: [{ name: 'cl-up', alias: 'cl' }] }],
      'gemini-api-key': [{ 'api-key': 'g-1', 'base-url': mock.url, models: [{ name: 'gem-up', alias: 'gem' }] }],
      ...extra,
    },
  };
}

async function post(p, route, body) {
  const r = await fetch(`${p.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  return { status: r.status, text: await r.text() };
}

const sql = (db, q) => execFileSync('sqlite3', ['-json', db, q], { encoding: 'utf8' }).trim();

const msgs = [{ role: 'user', content: 'hi' }];
const REQUESTS = [
  ['/v1/chat/completions', { model: 'm', messages: msgs }],
  ['/v1/chat/completions', { model: 'm', stream: true, stream_options: { include_usage: true }, messages: msgs }],
  ['/v1/messages', { model: 'cl', max_tokens: 16, messages: msgs }],
  ['/v1/messages', { model: 'cl', max_tokens: 16, stream: true, messages: msgs }],
  ['/v1beta/models/gem:generateContent', { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }],
  ['/v1beta/models/gem:streamGenerateContent?alt=sse', { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }],
];

// Serves REQUESTS and returns the stored records (without id and times)
// and the request and token counters.
async function run(name, extra) {
  const db = path.join(tmp, `${name}.db`);
  const p = await startProxy(opts(db, extra));
  try {
    for (const [route, body] of REQUESTS) assert.equal((await post(p, route, body)).status, 200, route);
    // a relayed upstream error (the relay hands a non-2xx to Lua: path lua)
    mock.once({ error: { status: 400, message: 'bad thing' } });
    assert.equal((await post(p, '/v1/messages', REQUESTS[2][1])).status, 400);
    const end = Date.now() + 10000;
    const count = () => Number(JSON.parse(sql(db, 'select count(*) as n from requests') || '[{"n":0}]')[0].n);
    while (count() < REQUESTS.length + 1 && Date.now() < end) await sleep(50);
    const rows = JSON.parse(sql(db, 'select method, endpoint, client_format, provider, account, credential, model, '
      + 'upstream_model, alias, client_key, error, tag, path, source, stream, status, failed, attempts, input, output, '
      + 'reasoning, cache_read, cache_write, ttft_ms is not null as has_ttft, latency_ms > 0 as has_latency, '
      + 'length(id) as id_len, time > 1.7e9 as has_time from requests order by endpoint, stream, status'));
    const metrics = await (await fetch(`${p.url}/metrics`, { headers: { authorization: `Bearer ${MKEY}` } })).text();
    const series = metrics.split('\n').filter((l) => /^cliproxy_(requests|tokens)_total\{/.test(l)
      && !/endpoint="\/(metrics|healthz)"/.test(l)).sort();
    await p.stop();
    return { rows, series, stderr: p.stderr() }; // (the access log is complete once it exited)
  } finally {
    await p.stop();
  }
}

test('a relayed request gives the same record from C as through rt.record.lane', { timeout: 60000 }, async () => {
  const native = await run('native', {});
  const spans0 = spans;
  const lua = await run('lua', { otel: { endpoint: `http://127.0.0.1:${collector.address().port}/v1/traces` } });
  assert.equal(native.rows.length, REQUESTS.length + 1, JSON.stringify(native.rows));
  // every answered route went through the relay, with its usage read
  const lane = native.rows.filter((r) => r.path === 'lane');
  assert.equal(lane.length, REQUESTS.length, JSON.stringify(native.rows));
  for (const r of lane) {
    assert.ok(r.input > 0 && r.output > 0, JSON.stringify(r));
    assert.equal(r.id_len, 36);
    assert.equal(r.has_time, 1);
    assert.equal(r.client_key.startsWith('key-'), true);
    assert.equal(r.has_ttft, r.stream);
  }
  assert.deepEqual(lua.rows, native.rows);
  assert.deepEqual(lua.series, native.series);
  assert.ok(native.series.some((l) => /path="lane"/.test(l)), native.series.join('\n'));
  // the access log has a line per request on both
  for (const out of [native.stderr, lua.stderr]) {
    assert.equal(out.split('\n').filter((l) => /\| POST \/v1.* \| fast/.test(l)).length, REQUESTS.length, out);
  }
  // the second proxy did run a Lua subscriber for each record
  const end = Date.now() + 5000;
  while (spans === spans0 && Date.now() < end) await sleep(50);
  assert.ok(spans > spans0);
});
