// The C relay (runtime/net/cpx_lane.c, lua/rt/lane.lua) on every same-format
// route besides Chat (fast_path.test.mjs): Anthropic Messages to
// claude-api-key, Gemini generateContent / streamGenerateContent?alt=sse to
// gemini-api-key, and the Responses API to a provider that declares `relay`
// (a lua.paths override of providers/codex.lua: the built-in Codex provider
// rewrites every body, so it stays in Lua). For each: the bytes arrive
// unchanged both ways (key order, number text), streams are relayed, a
// 429 / 500 / error as the first stream event is handed to Lua and retried
// on the next account, usage is recorded per format, and what must be seen
// by Lua (a body member the provider's fixup changes, a header, a payload
// rule, a query) stays in Lua.
//
// One node:http upstream answers by path and by the account's key:
//   good keys (cl-good, g-good, r-good)  the scripted answer of the format
//   bad-429 / bad-500                    that status with the format's error
//   bad-sse                              200, then an error as first real event

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startProxy } from './lib/proxy.mjs';

const KEY = 'sk-relay-routes-e2e';
const MKEY = 'relay-routes-metrics';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = (ms = 20000) => ({ timeout: ms });

// ---------------------------------------------------------------- answers

// Key order and number text no encoder would produce.
const CL_JSON = '{"type":"message","id":"msg_relay1","role":"assistant","model":"up",' +
  '"content":[{"type":"text","text":"PONG ✓","z":1.10,"a":12345678901234567891}],' +
  '"stop_reason":"end_turn","stop_sequence":null,"usage":{"output_tokens":5,"input_tokens":13}}';
const CL_SSE = 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_relay2","type":"message",' +
  '"role":"assistant","model":"up","content":[],"usage":{"input_tokens":13,"output_tokens":1}}}\n\n' +
  'event: ping\ndata: {"type": "ping"}\n\n' +
  'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n' +
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"PO"}}\n\n' +
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"NG"}}\n\n' +
  'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n' +
  'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\n' +
  'event: message_stop\ndata: {"type":"message_stop"}\n\n';
const CL_SSE_ERR = 'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":1}}}\n\n' +
  'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down (sse)"}}\n\n';
const CL_ERR = (status) => JSON.stringify({ type: 'error', error: { type: status === 429 ? 'rate_limit_error' : 'api_error', message: `upstream ${status}` } });

const G_JSON = '{"candidates":[{"content":{"role":"model","parts":[{"text":"PONG"}]},"finishReason":"STOP","index":0,"z":1.10}],' +
  '"usageMetadata":{"totalTokenCount":21,"promptTokenCount":17,"candidatesTokenCount":4},"modelVersion":"gem-up"}';
const G_SSE = 'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"PO"}]},"index":0}],"modelVersion":"gem-up"}\r\n\r\n' +
  'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"NG"}]},"finishReason":"STOP","index":0}],' +
  '"usageMetadata":{"promptTokenCount":17,"candidatesTokenCount":4,"totalTokenCount":21},"modelVersion":"gem-up"}\r\n\r\n';
const G_SSE_ERR = 'data: {"error":{"code":429,"message":"quota (sse)","status":"RESOURCE_EXHAUSTED"}}\r\n\r\n';
const G_ERR = (status) => JSON.stringify({ error: { code: status, message: `upstream ${status}`, status: status === 429 ? 'RESOURCE_EXHAUSTED' : 'INTERNAL' } });

const R_OBJ = '{"id":"resp_relay","object":"response","status":"completed","model":"r-up","output":[{"type":"message","id":"m1",' +
  '"role":"assistant","content":[{"type":"output_text","text":"PONG","annotations":[]}]}],"usage":{"output_tokens":2,"input_tokens":19,"total_tokens":21},"z":1.10}';
const R_SSE = 'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_relay","status":"in_progress","output":[]}}\n\n' +
  'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,"delta":"PONG"}\n\n' +
  `event: response.completed\ndata: {"type":"response.completed","sequence_number":2,"response":${R_OBJ}}\n\n`;
const R_SSE_ERR = 'event: response.created\ndata: {"type":"response.created","response":{"id":"r","status":"in_progress"}}\n\n' +
  'event: response.failed\ndata: {"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"rate_limit_exceeded","message":"slow (sse)"}}}\n\n';
const R_ERR = (status) => JSON.stringify({ error: { message: `upstream ${status}`, type: status === 429 ? 'rate_limit_error' : 'server_error', code: null } });

// ---------------------------------------------------------------- upstream

let up;
const seen = []; // { url, headers, raw, key }

function keyOf(h) {
  if (h['x-goog-api-key']) return h['x-goog-api-key'];
  if (h['x-api-key']) return h['x-api-key'];
  return (h.authorization || '').replace(/^Bearer /, '');
}

function answer(res, status, ct, body) {
  res.writeHead(status, { 'content-type': ct, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function handle(req, res, raw) {
  const key = keyOf(req.headers);
  const stream = req.url.includes(':streamGenerateContent') || /"stream"\s*:\s*true/.test(raw);
  const fmt = req.url.startsWith('/v1/messages') ? 'claude' : req.url.startsWith('/v1beta/') ? 'gemini' : 'responses';
  const err = { claude: CL_ERR, gemini: G_ERR, responses: R_ERR }[fmt];
  if (key === 'bad-429') return answer(res, 429, 'application/json', err(429));
  if (key === 'bad-500') return answer(res, 500, 'application/json', err(500));
  if (key === 'bad-sse') return answer(res, 200, 'text/event-stream', { claude: CL_SSE_ERR, gemini: G_SSE_ERR, responses: R_SSE_ERR }[fmt]);
  if (!stream) return answer(res, 200, 'application/json', { claude: CL_JSON, gemini: G_JSON, responses: R_OBJ }[fmt]);
  // a stream in pieces, split inside events
  const text = { claude: CL_SSE, gemini: G_SSE, responses: R_SSE }[fmt];
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const cut = [0, 7, Math.floor(text.length / 2), text.length - 3, text.length];
  (async () => {
    for (let i = 1; i < cut.length; i++) {
      res.write(text.slice(cut[i - 1], cut[i]));
      await sleep(5);
    }
    res.end();
  })();
}

// ---------------------------------------------------------------- proxy

let proxy;
let tmp;

// The Responses provider for this test: the Codex provider's accounts
// (codex-api-key) as a plain Responses upstream that declares relay.
const RESPONSES_PROVIDER = `
local cooldown = require("lib.cooldown")
local util = require("lib.provider_util")
local _M = { name = "codex-api-key", format = "openai_responses", relay = {} }
function _M.prepare(ctx, target, body, stream)
  local entry, key = target.entry, target.key
  return { method = "POST", url = util.base(entry, "") .. "/responses", body = body,
           headers = { ["Content-Type"] = "application/json",
                       ["Authorization"] = "Bearer " .. (key and key["api-key"] or entry["api-key"]),
                       ["Accept"] = stream and "text/event-stream" or "application/json" } }
end
function _M.classify(status, headers, body) return cooldown.classify(status, headers, body) end
return _M
`;

const claudeEntry = (key, alias, extra = {}) => ({ 'api-key': key, 'base-url': up.url, models: [{ name: 'cl-up', alias }], ...extra });
const geminiEntry = (key, alias) => ({ 'api-key': key, 'base-url': up.url, models: [{ name: 'gem-up', alias }] });
const codexEntry = (key, alias) => ({ 'api-key': key, 'base-url': `${up.url}/v1`, models: [{ name: 'r-up', alias }] });

before(async () => {
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      seen.push({ url: req.url, headers: req.headers, raw, key: keyOf(req.headers) });
      handle(req, res, raw);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  up = { url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }) };

  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-relay-routes-'));
  fs.mkdirSync(path.join(tmp, 'lua', 'providers'), { recursive: true });
  fs.writeFileSync(path.join(tmp, 'lua', 'providers', 'codex.lua'), RESPONSES_PROVIDER);
  const retrying = (mk, pre) => ['429', '500', 'sse'].flatMap((k) => [mk(`bad-${k}`, `${pre}-r${k}`), mk(`${pre}-good`, `${pre}-r${k}`)]);
  proxy = await startProxy({
    apiKeys: [KEY],
    extra: {
      workers: 1,
      streaming: { 'bootstrap-retries': 1 },
      metrics: { enabled: true, key: MKEY },
      lua: { paths: [path.join(tmp, 'lua')] },
      payload: { override: [{ models: [{ name: 'cl-pay', protocol: 'claude' }], params: { temperature: 0.25 } }] },
      'claude-api-key': [claudeEntry('cl-good', 'cl'), claudeEntry('cl-good', 'cl-use'), claudeEntry('cl-good', 'cl-pay'),
        ...retrying(claudeEntry, 'cl')],
      'gemini-api-key': [geminiEntry('g-good', 'gem'), geminiEntry('g-good', 'gem-use'), ...retrying(geminiEntry, 'g')],
      'codex-api-key': [codexEntry('r-good', 'rs'), codexEntry('r-good', 'rs-use'), ...retrying(codexEntry, 'r')],
    },
  });
});

after(async () => {
  await proxy?.stop();
  await up?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------- helpers

function accessLines() {
  const s = proxy.stderr();
  return s.slice(0, s.lastIndexOf('\n') + 1).split('\n').filter((l) => /\| POST \/v1/.test(l));
}
const isFast = (line) => / \| fast( \| |$)/.test(line);

// Runs fn; returns its result and the access-log line it produced.
async function logged(fn) {
  const n0 = accessLines().length;
  const res = await fn();
  const end = Date.now() + 3000;
  while (accessLines().length < n0 + 1 && Date.now() < end) await sleep(10);
  const lines = accessLines().slice(n0);
  assert.equal(lines.length, 1, `one access-log line, got:\n${lines.join('\n')}`);
  return { ...res, line: lines[0] };
}

async function post(route, body, headers = {}) {
  const r = await fetch(`${proxy.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body,
    signal: AbortSignal.timeout(10000),
  });
  return { status: r.status, ct: r.headers.get('content-type'), text: await r.text() };
}

const since = (n0) => seen.slice(n0);

// Client bodies with odd key order, number text and non-ASCII.
const claudeBody = (model, { stream = false, extra = '', big = false } = {}) =>
  `{"max_tokens":64,  "model" : "${model}","messages":[{"content":"${big ? 'x — ✓ '.repeat(11000) : 'hi ✓ \\"q\\"'}","role":"user"}],` +
  `"metadata":{"model":"keep-me","n":1.10,"big":12345678901234567891}${stream ? ',"stream":true' : ''}${extra}}`;
const geminiBody = '{"contents":[{"parts":[{"text":"hi ✓"}],"role":"user"}],"generationConfig":{"temperature":1.10,"seed":12345678901234567891}}';
const responsesBody = (model, stream) =>
  `{"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi ✓"}]}],"model":"${model}",` +
  `"z":1.10${stream ? ',"stream":true' : ''}}`;

// ---------------------------------------------------------------- tests

test('startup: the Messages, Responses and Gemini routes are compiled into the relay', T(), async () => {
  const m = proxy.stderr().match(/fast path: (\d+) model\(s\) served in C \(([^)]*)\)/);
  assert.ok(m, proxy.stderr());
  assert.match(m[2], /\/v1\/messages: \d+/);
  assert.match(m[2], /\/v1\/responses: \d+/);
  assert.match(m[2], /\/v1beta\/models\/: \d+/);
});

for (const big of [false, true]) {
  test(`messages${big ? ' (~80 KB body)' : ''}: relayed in C, only "model" rewritten, the answer's bytes unchanged`, T(), async () => {
    const n0 = seen.length;
    const body = claudeBody('cl', { big });
    const r = await logged(() => post('/v1/messages', body, { 'anthropic-version': '2099-01-01', 'anthropic-beta': 'b-one,b-two' }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, CL_JSON);
    assert.ok(isFast(r.line), r.line);
    const [u] = since(n0);
    assert.equal(u.url, '/v1/messages?beta=true');
    assert.ok(u.raw === body.replace('"model" : "cl"', '"model" : "cl-up"'), 'the upstream body is the client\'s with the model replaced');
    assert.equal(u.headers['anthropic-version'], '2099-01-01');
    assert.equal(u.headers['anthropic-beta'], 'b-one,b-two');
    assert.equal(u.headers.authorization, 'Bearer cl-good');
    assert.equal(u.headers.accept, 'application/json');
    assert.equal(u.headers['content-length'], String(Buffer.byteLength(u.raw)));
    assert.ok(!JSON.stringify(u.headers).includes(KEY), 'the client key never goes upstream');
  });
}

test('messages: without the client headers the account\'s own (prepare\'s) are sent', T(), async () => {
  const n0 = seen.length;
  const r = await logged(() => post('/v1/messages', claudeBody('cl')));
  assert.equal(r.status, 200);
  assert.ok(isFast(r.line), r.line);
  const [u] = since(n0);
  assert.equal(u.headers['anthropic-version'], '2023-06-01');
  assert.equal(u.headers['anthropic-beta'], undefined);
});

test('messages stream: relayed as the upstream sent it, SSE head after the first real event', T(), async () => {
  const n0 = seen.length;
  const r = await logged(() => post('/v1/messages', claudeBody('cl', { stream: true })));
  assert.equal(r.status, 200);
  assert.match(r.ct, /^text\/event-stream/);
  assert.equal(r.text, CL_SSE);
  assert.ok(isFast(r.line), r.line);
  assert.equal(since(n0)[0].headers.accept, 'text/event-stream');
});

for (const [what, extra, headers, check] of [
  ['body betas (the fix-up moves them to the header)', ',"betas":["from-body","b-two"]', { 'anthropic-beta': 'b-one,from-body' },
    (u) => {
      assert.ok(!('betas' in JSON.parse(u.raw)), u.raw);
      // the client's first, then the body's, each once
      assert.equal(u.headers['anthropic-beta'], 'b-one,from-body,b-two');
    }],
  ['body betas and x-cpa-claude-1m', ',"betas":["from-body"]', { 'x-cpa-claude-1m': '1' },
    (u) => {
      assert.ok(!('betas' in JSON.parse(u.raw)), u.raw);
      assert.equal(u.headers['anthropic-beta'], 'from-body,context-1m-2025-08-07');
    }],
  ['thinking with temperature (the fix-up sets it to 1)', ',"thinking":{"type":"enabled","budget_tokens":1024},"temperature":0.5', {},
    (u) => assert.equal(JSON.parse(u.raw).temperature, 1)],
  ['x-cpa-claude-1m (a beta is added)', '', { 'x-cpa-claude-1m': '1' },
    (u) => assert.match(u.headers['anthropic-beta'] || '', /context-1m/)],
]) {
  test(`messages with ${what}: served by Lua`, T(), async () => {
    const n0 = seen.length;
    const r = await logged(() => post('/v1/messages', claudeBody('cl', { extra }), headers));
    assert.equal(r.status, 200, r.text);
    assert.ok(!isFast(r.line), `relayed although Lua must see it: ${r.line}`);
    check(since(n0)[0]);
  });
}

// The relay sends the Anthropic-Beta value Lua would: a Claude Code request
// gives the upstream the same header through the relay and through a proxy
// with fast-path: false (merge_betas: each beta once, no spaces). A plain
// list is relayed as written; any other form is Lua's.
test('messages: Anthropic-Beta upstream is the same through the relay and with fast-path: false', T(30000), async () => {
  const lua = await startProxy({
    apiKeys: [KEY],
    extra: { 'fast-path': false, 'claude-api-key': [claudeEntry('cl-good', 'cl')] },
  });
  try {
    const cc = {
      'user-agent': 'claude-cli/2.1.197 (external, sdk-cli)',
      'anthropic-version': '2023-06-01',
      'x-claude-code-session-id': 'e8d84ba7-4197-43cf-94e3-0019d01dc0c4',
    };
    const cases = [
      ['a plain list', 'claude-code-20250219,interleaved-thinking-2025-05-14,effort-2025-11-24', true],
      ['spaces after the commas', 'claude-code-20250219, interleaved-thinking-2025-05-14', false],
      ['a beta twice', 'claude-code-20250219,effort-2025-11-24,claude-code-20250219', false],
      ['an empty item', 'claude-code-20250219,,effort-2025-11-24', false],
    ];
    for (const [what, beta, fast] of cases) {
      const headers = { ...cc, 'anthropic-beta': beta };
      const n0 = seen.length;
      const r = await logged(() => post('/v1/messages', claudeBody('cl'), headers));
      assert.equal(r.status, 200, r.text);
      assert.equal(isFast(r.line), fast, `${what}: ${r.line}`);
      const relayed = since(n0)[0].headers['anthropic-beta'];
      const n1 = seen.length;
      const l = await fetch(`${lua.url}/v1/messages`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
        body: claudeBody('cl'),
        signal: AbortSignal.timeout(10000),
      });
      assert.equal(l.status, 200, await l.text());
      const viaLua = since(n1)[0].headers['anthropic-beta'];
      assert.equal(relayed, viaLua, `${what}: relay ${relayed}, Lua ${viaLua}`);
      assert.doesNotMatch(viaLua, /\s|,,/, what);
    }
  } finally {
    await lua.stop();
  }
});

test('messages with a payload rule for the model: served by Lua, the rule applied', T(), async () => {
  const n0 = seen.length;
  const r = await logged(() => post('/v1/messages', claudeBody('cl-pay')));
  assert.equal(r.status, 200);
  assert.ok(!isFast(r.line), r.line);
  assert.equal(JSON.parse(since(n0)[0].raw).temperature, 0.25);
});

// Two accounts per model, the first failing: over two requests the pool's
// round robin starts once at each; the failing one is tried exactly once
// (handed to Lua, which retries on the good one), the good one serves both,
// and exactly one of the two is relayed to the end in C.
const FAILS = [
  ['messages', 'cl', (k) => ['/v1/messages', claudeBody(`cl-r${k}`, { stream: k === 'sse' })], CL_JSON, CL_SSE],
  ['gemini', 'g', (k) => [`/v1beta/models/g-r${k}:${k === 'sse' ? 'streamGenerateContent?alt=sse' : 'generateContent'}`, geminiBody], G_JSON, G_SSE],
  ['responses', 'r', (k) => ['/v1/responses', responsesBody(`r-r${k}`, k === 'sse')], R_OBJ, R_SSE],
];
for (const [route, pre, req, okJson, okSse] of FAILS) {
  for (const k of ['429', '500', 'sse']) {
    test(`${route}: ${k === 'sse' ? 'an error as the first stream event' : `a ${k}`} is handed to Lua and retried on the next account`, T(), async () => {
      const n0 = seen.length;
      const lines = [];
      for (let i = 0; i < 2; i++) {
        const [p, b] = req(k);
        const r = await logged(() => post(p, b));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.text, k === 'sse' ? okSse : okJson);
        lines.push(r.line);
      }
      const got = since(n0);
      assert.equal(got.filter((u) => u.key === `bad-${k}`).length, 1, JSON.stringify(got.map((u) => u.key)));
      assert.equal(got.filter((u) => u.key === `${pre}-good`).length, 2);
      assert.equal(lines.filter(isFast).length, 1, lines.join('\n'));
    });
  }
}

test('gemini: the body goes as written to the model in the path, both ways unchanged', T(), async () => {
  for (const stream of [false, true]) {
    const n0 = seen.length;
    const action = stream ? 'streamGenerateContent?alt=sse' : 'generateContent';
    const r = await logged(() => post(`/v1beta/models/gem:${action}`, geminiBody, { authorization: '', 'x-goog-api-key': KEY }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, stream ? G_SSE : G_JSON);
    assert.ok(isFast(r.line), r.line);
    const [u] = since(n0);
    assert.equal(u.url, `/v1beta/models/gem-up:${action}`);
    assert.ok(u.raw === geminiBody);
    assert.equal(u.headers['x-goog-api-key'], 'g-good');
  }
});

test('gemini: another query (a key, no alt=sse) is Lua\'s, and still answered', T(), async () => {
  const a = await logged(() => post(`/v1beta/models/gem:generateContent?key=${KEY}`, geminiBody, { authorization: '' }));
  assert.equal(a.status, 200, a.text);
  assert.ok(!isFast(a.line), a.line);
  const b = await logged(() => post('/v1beta/models/gem:streamGenerateContent', geminiBody));
  assert.equal(b.status, 200, b.text);
  assert.ok(!isFast(b.line), b.line);
});

test('responses: relayed in C, stream and not, bytes unchanged', T(), async () => {
  for (const stream of [false, true]) {
    const n0 = seen.length;
    const body = responsesBody('rs', stream);
    const r = await logged(() => post('/v1/responses', body));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, stream ? R_SSE : R_OBJ);
    assert.ok(isFast(r.line), r.line);
    const [u] = since(n0);
    assert.equal(u.url, '/v1/responses');
    assert.ok(u.raw === body.replace('"model":"rs"', '"model":"r-up"'));
  }
});

test('a wrong client key is refused on every relayed route (by Lua, in the client\'s envelope)', T(), async () => {
  const n0 = seen.length;
  for (const [p, b] of [['/v1/messages', claudeBody('cl')], ['/v1/responses', responsesBody('rs')], ['/v1beta/models/gem:generateContent', geminiBody]]) {
    const r = await logged(() => post(p, b, { authorization: 'Bearer wrong' }));
    assert.equal(r.status, 401, `${p}: ${r.text}`);
    assert.ok(!isFast(r.line), r.line);
  }
  assert.equal(since(n0).length, 0);
});

// ---------------------------------------------------------------- usage

async function metric(name) {
  const r = await fetch(`${proxy.url}/metrics`, { headers: { authorization: `Bearer ${MKEY}` } });
  return (await r.text()).split('\n').filter((l) => l.startsWith(name + '{'));
}
const tokens = (lines, model, kind) => lines
  .filter((l) => l.includes(`model="${model}"`) && l.includes(`kind="${kind}"`))
  .reduce((s, l) => s + Number(l.split(' ').pop()), 0);

test('usage: each format\'s usage is read from what the relay sent (stream and not)', T(30000), async () => {
  const cases = [
    ['cl-use', 13, 5, (s) => ['/v1/messages', claudeBody('cl-use', { stream: s })]],
    ['gem-use', 17, 4, (s) => [`/v1beta/models/gem-use:${s ? 'streamGenerateContent?alt=sse' : 'generateContent'}`, geminiBody]],
    ['rs-use', 19, 2, (s) => ['/v1/responses', responsesBody('rs-use', s)]],
  ];
  for (const [, , , req] of cases) {
    for (const s of [false, true]) {
      const [p, b] = req(s);
      const r = await logged(() => post(p, b));
      assert.equal(r.status, 200, r.text);
      assert.ok(isFast(r.line), r.line);
    }
  }
  const end = Date.now() + 5000;
  let lines;
  for (;;) {
    lines = await metric('cliproxy_tokens_total');
    if (cases.every(([m, i]) => tokens(lines, m, 'input') === 2 * i) || Date.now() > end) break;
    await sleep(50);
  }
  for (const [m, i, o] of cases) {
    assert.equal(tokens(lines, m, 'input'), 2 * i, `${m} input tokens:\n${lines.join('\n')}`);
    assert.equal(tokens(lines, m, 'output'), 2 * o, `${m} output tokens`);
  }
  const req = await metric('cliproxy_requests_total');
  for (const ep of ['/v1/messages', '/v1/responses', '/v1beta/models/gem-use:generateContent']) {
    assert.ok(req.some((l) => l.includes(`endpoint="${ep}"`) && l.includes('path="lane"')), `${ep} counted as lane:\n${req.join('\n')}`);
  }
});
