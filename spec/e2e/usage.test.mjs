// The request record, the usage store and GET /metrics end to end:
// requests served by the C fast lane and by the Lua pipeline (stream and
// not, errors) are all counted; /metrics parses with a Prometheus text-format
// parser; the SQLite store keeps every record across a restart and keeps
// everything written before a kill -9.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import parsePrometheus from 'parse-prometheus-text-format';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const KEY = 'sk-usage-e2e';
const MKEY = 'metrics-e2e-key';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 20000) => ({ timeout: ms });

let mock;
let tmp;

before(async () => {
  mock = await startMock();
  mock.reply({ text: 'hello there', usage: { input: 11, output: 7 } });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-usage-e2e-'));
});

after(async () => {
  await mock.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function proxyOpts(dbPath, extra = {}) {
  return {
    apiKeys: [KEY],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-1'], models: [{ name: 'up-model', alias: 'm' }] }],
    extra: {
      usage: { enabled: true, path: dbPath, 'flush-interval-ms': 100 },
      metrics: { enabled: true, key: MKEY },
      ...extra,
    },
  };
}

async function post(p, route, body, headers = {}) {
  const r = await fetch(`${p.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  return { status: r.status, text: await r.text() };
}

async function scrape(p, key = MKEY) {
  const r = await fetch(`${p.url}/metrics`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  return { status: r.status, type: r.headers.get('content-type'), text: await r.text() };
}

function family(parsed, name) {
  return parsed.find((f) => f.name === name) || { metrics: [] };
}

const sum = (ms, pred = () => true) => ms.filter((m) => pred(m.labels || {})).reduce((a, m) => a + Number(m.value), 0);

// Waits until the metrics satisfy cond (records reach C after the loop
// iteration that finished the request, and the writer writes in batches).
async function until(p, cond, what) {
  const end = Date.now() + 10000;
  let parsed;
  for (;;) {
    parsed = parsePrometheus((await scrape(p)).text);
    if (cond(parsed)) return parsed;
    if (Date.now() > end) assert.fail(`metrics never showed ${what}`);
    await sleep(50);
  }
}

const written = (parsed) => sum(family(parsed, 'cliproxy_usage_records_total').metrics, (l) => l.result === 'written');

function sql(db, query) {
  return execFileSync('sqlite3', [db, query], { encoding: 'utf8' }).trim();
}

const chat = (stream) => ({
  model: 'm', stream, messages: [{ role: 'user', content: 'hi' }],
  ...(stream ? { stream_options: { include_usage: true } } : {}),
});
const claude = (stream) => ({ model: 'm', max_tokens: 64, stream, messages: [{ role: 'user', content: 'hi' }] });

test('metrics: off by default, key-protected when on', T(), async () => {
  const off = await startProxy({ apiKeys: [KEY] });
  try {
    assert.equal((await scrape(off)).status, 404);
  } finally {
    await off.stop();
  }
  const db = path.join(tmp, 'auth.db');
  const p = await startProxy(proxyOpts(db));
  try {
    assert.equal((await scrape(p, null)).status, 401);
    assert.equal((await scrape(p, 'wrong')).status, 401);
    const ok = await scrape(p);
    assert.equal(ok.status, 200);
    assert.match(ok.type, /^text\/plain; version=0\.0\.4/);
    const parsed = parsePrometheus(ok.text);
    for (const n of ['cliproxy_requests_total', 'cliproxy_requests_in_flight', 'cliproxy_streams_in_flight',
      'cliproxy_request_duration_seconds', 'cliproxy_usage_records_total', 'cliproxy_account_state']) {
      assert.ok(parsed.find((f) => f.name === n), `family ${n} in\n${ok.text}`);
    }
    // the scrape itself is a finished request, counted like any other
    assert.ok(sum(family(parsed, 'cliproxy_account_state').metrics, (l) => l.state === 'ok') >= 1);
  } finally {
    await p.stop();
  }
});

test('every path is counted: lane and Lua, stream and not, errors; usage survives a restart', T(40000), async () => {
  const db = path.join(tmp, 'restart.db');
  let p = await startProxy(proxyOpts(db));
  let stopped = false;
  try {
    // the C lane: OpenAI chat to a plain-http openai-compatibility upstream
    assert.equal((await post(p, '/v1/chat/completions', chat(false))).status, 200);
    const s = await post(p, '/v1/chat/completions', chat(true));
    assert.equal(s.status, 200);
    assert.match(s.text, /data: \[DONE\]/);
    // the Lua pipeline: Claude clients through the hub
    assert.equal((await post(p, '/v1/messages', claude(false))).status, 200);
    const cs = await post(p, '/v1/messages', claude(true));
    assert.equal(cs.status, 200);
    assert.match(cs.text, /message_stop/);
    // errors: an unknown model (the lane leaves it to Lua), an upstream 500
    assert.equal((await post(p, '/v1/chat/completions', { model: 'nope', messages: [] })).status, 502);
    mock.once({ error: { status: 400, message: 'bad thing' } });
    assert.equal((await post(p, '/v1/messages', claude(false))).status, 400);
    // a wrong key: answered, and recorded without any key label
    assert.equal((await post(p, '/v1/messages', claude(false), { authorization: 'Bearer wrong' })).status, 401);

    const parsed = await until(p, (x) => written(x) >= 7, '7 usage records written');
    const req = family(parsed, 'cliproxy_requests_total').metrics;
    const chatEp = (l) => l.endpoint === '/v1/chat/completions';
    assert.equal(sum(req, (l) => chatEp(l) && l.path === 'lane' && l.status === '200'), 2, JSON.stringify(req));
    assert.equal(sum(req, (l) => chatEp(l) && l.path === 'lua' && l.status === '502'), 1);
    assert.equal(sum(req, (l) => l.endpoint === '/v1/messages' && l.status === '200'), 2);
    assert.equal(sum(req, (l) => l.endpoint === '/v1/messages' && l.status === '400'), 1);
    assert.equal(sum(req, (l) => l.endpoint === '/v1/messages' && l.status === '401'), 1);
    // tokens: 11 in / 7 out for each of the 4 answered requests
    const tok = family(parsed, 'cliproxy_tokens_total').metrics;
    assert.equal(sum(tok, (l) => l.kind === 'input' && l.model === 'm'), 44, JSON.stringify(tok));
    assert.equal(sum(tok, (l) => l.kind === 'output' && l.model === 'm'), 28);
    // histograms: parse-prometheus-text-format 1.1.1 folds a histogram's
    // labelled series into one, so their counts are read from the text
    const text = (await scrape(p)).text;
    const hcount = (name) => Number((text.match(new RegExp(`^${name}_count\\{provider="openai_compat"\\} (\\d+)$`, 'm')) || [])[1]);
    assert.equal(hcount('cliproxy_request_duration_seconds'), 5, text); // the requests that reached the upstream
    assert.equal(hcount('cliproxy_time_to_first_token_seconds'), 2); // the two streams
    assert.ok(family(parsed, 'cliproxy_request_duration_seconds').metrics.length >= 1);

    // what the store holds (read with the sqlite3 CLI, not through cliproxy)
    assert.equal(sql(db, 'select count(*) from requests'), '7');
    assert.equal(sql(db, "select count(*) from requests where path = 'lane' and stream = 1 and input = 11 and output = 7"), '1');
    assert.equal(sql(db, "select count(*) from requests where path = 'lua' and endpoint = '/v1/messages' and stream = 1 and output = 7"), '1');
    assert.equal(sql(db, "select count(*) from requests where failed = 1"), '3');
    assert.equal(sql(db, "select count(distinct client_key) from requests where status = 200"), '1');
    assert.match(sql(db, "select client_key from requests where status = 200 limit 1"), /^key-[0-9a-f]{8}$/);
    assert.equal(sql(db, `select count(*) from requests where client_key like '%${KEY}%'`), '0');
    assert.equal(sql(db, "select count(*) from requests where status = 401 and client_key is not null"), '0');
    assert.equal(fs.statSync(db).mode & 0o777, 0o600);

    // a clean restart loses nothing (and exits 0: under ASan, no leak)
    assert.equal((await p.stop()).code, 0, p.stderr());
    stopped = true;
    p = await startProxy(proxyOpts(db));
    stopped = false;
    assert.equal((await post(p, '/v1/chat/completions', chat(false))).status, 200);
    await until(p, (x) => written(x) >= 1, 'the new record written');
    assert.equal(sql(db, 'select count(*) from requests'), '8');
  } finally {
    if (!stopped) await p.stop();
  }
});

// A client that leaves mid-stream: its request is recorded as 499 on both
// paths (the lane's stream relay, the Lua pipe's on_abort).
async function abandon(p, route, body) {
  const ac = new AbortController();
  const r = await fetch(`${p.url}${route}`, {
    method: 'POST', signal: ac.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  await reader.read(); // the first bytes of the stream
  ac.abort();
  await reader.closed.catch(() => {});
}

test('a client that disconnects mid-stream is recorded (lane and Lua)', T(30000), async () => {
  const db = path.join(tmp, 'abort.db');
  const p = await startProxy(proxyOpts(db));
  try {
    mock.once({ endless: { intervalMs: 5, maxMs: 20000 } });
    await abandon(p, '/v1/chat/completions', chat(true));
    mock.once({ endless: { intervalMs: 5, maxMs: 20000 } });
    await abandon(p, '/v1/messages', claude(true));
    const parsed = await until(p, (x) => sum(family(x, 'cliproxy_requests_total').metrics, (l) => l.status === '499') >= 2,
      'two 499 records');
    const req = family(parsed, 'cliproxy_requests_total').metrics;
    assert.equal(sum(req, (l) => l.status === '499' && l.path === 'lane'), 1, JSON.stringify(req));
    assert.equal(sum(req, (l) => l.status === '499' && l.path === 'lua' && l.endpoint === '/v1/messages'), 1);
    await until(p, (x) => written(x) >= 2, 'two records written');
    assert.equal(sql(db, "select count(*) from requests where status = 499 and failed = 1 and error = 'client closed request'"), '2');
    const inflight = parsePrometheus((await scrape(p)).text);
    assert.equal(sum(family(inflight, 'cliproxy_streams_in_flight').metrics), 0);
  } finally {
    mock.reply({ text: 'hello there', usage: { input: 11, output: 7 } });
    await p.stop();
  }
});

test('a kill -9 keeps every record the writer had written', T(30000), async () => {
  const db = path.join(tmp, 'kill.db');
  const p = await startProxy(proxyOpts(db));
  const N = 12;
  for (let i = 0; i < N; i++) {
    assert.equal((await post(p, i % 2 ? '/v1/messages' : '/v1/chat/completions', i % 2 ? claude(false) : chat(false))).status, 200);
  }
  await until(p, (x) => written(x) >= N, `${N} records written`);
  p.child.kill('SIGKILL');
  await new Promise((r) => p.child.once('exit', r));
  assert.equal(sql(db, 'select count(*) from requests'), String(N));
  fs.rmSync(p.dir, { recursive: true, force: true });
});

test('OTLP/HTTP: one span per request reaches a mock collector', T(30000), async () => {
  const bodies = [];
  const collector = http.createServer((req, res) => {
    let b = '';
    req.on('data', (d) => { b += d; });
    req.on('end', () => {
      bodies.push({ path: req.url, type: req.headers['content-type'], json: JSON.parse(b) });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((r) => collector.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${collector.address().port}/v1/traces`;
  const p = await startProxy(proxyOpts(path.join(tmp, 'otel.db'), { otel: { endpoint, 'service-name': 'cpx-e2e' } }));
  try {
    assert.equal((await post(p, '/v1/chat/completions', chat(false))).status, 200);
    assert.equal((await post(p, '/v1/messages', claude(true))).status, 200);
    const spans = () => bodies.flatMap((b) => b.json.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans)));
    const route = (s) => s.attributes.find((a) => a.key === 'http.route')?.value.stringValue;
    const end = Date.now() + 10000;
    while (spans().filter((s) => route(s) !== '/healthz').length < 2 && Date.now() < end) await sleep(50);
    const got = spans().filter((s) => route(s) !== '/healthz');
    assert.equal(got.length, 2, JSON.stringify(bodies));
    assert.equal(bodies[0].path, '/v1/traces');
    assert.equal(bodies[0].type, 'application/json');
    assert.equal(bodies[0].json.resourceSpans[0].resource.attributes[0].value.stringValue, 'cpx-e2e');
    const attr = (s, k) => s.attributes.find((a) => a.key === k)?.value;
    const lane = got.find((s) => route(s) === '/v1/chat/completions');
    assert.equal(attr(lane, 'cliproxy.path').stringValue, 'lane');
    assert.equal(attr(lane, 'gen_ai.usage.input_tokens').intValue, '11');
    assert.equal(attr(lane, 'http.response.status_code').intValue, '200');
    const lua = got.find((s) => route(s) === '/v1/messages');
    assert.equal(attr(lua, 'cliproxy.path').stringValue, 'lua');
    assert.equal(attr(lua, 'gen_ai.usage.output_tokens').intValue, '7');
    const sent = family(parsePrometheus((await scrape(p)).text), 'cliproxy_otel_spans_total').metrics;
    assert.ok(sum(sent, (l) => l.result === 'sent') >= 2, JSON.stringify(sent));
    for (const s of got) {
      assert.match(s.traceId, /^[0-9a-f]{32}$/);
      assert.match(s.spanId, /^[0-9a-f]{16}$/);
      assert.equal(s.kind, 2);
      assert.ok(BigInt(s.endTimeUnixNano) >= BigInt(s.startTimeUnixNano));
      assert.equal(s.status.code, 1);
    }
  } finally {
    await p.stop();
    collector.close();
  }
});
