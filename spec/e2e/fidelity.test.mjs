// Issue 12: the upstream bytes of a translated request depend on nothing but
// the request: not the worker that served it, not the process (a restart),
// and they keep what the translator only carries (tool arguments and schema
// key order, number text, escapes).
//
// Each client format sends its fidelity fixture (spec/fixtures/translators/
// fidelity/matrix/) to a Chat Completions upstream, 24 times on fresh
// connections so that SO_REUSEPORT spreads them over both workers, then again
// after a restart. A middleware tags each upstream request with the worker
// that built it (a header, so the body stays the translator's own).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startProxy, ROOT } from './lib/proxy.mjs';

const T = () => ({ timeout: 60000 });
const FIX = path.join(ROOT, 'spec/fixtures/translators/fidelity/matrix');
const ARGS = '{"zeta":"z","n":12345678901234567891,"x":1.10,"alpha":-0,"e":1e-7}';
const N = 24;

const TAG = `
local cpx = require("cpx")
return { name = "worker_tag", priority = 1, schema = {}, hooks = {
  before_upstream = function(conf, ctx, ureq)
    ureq.headers = ureq.headers or {}
    ureq.headers["X-Cpx-Worker"] = tostring(cpx.worker_id())
  end,
} }
`;

const ROUTES = {
  claude: { path: '/v1/messages', file: 'request_claude.json', model: /"model":"[^"]*"/ },
  openai_responses: { path: '/v1/responses', file: 'request_openai_responses.json', model: /"model":"[^"]*"/ },
  gemini: { path: '/v1beta/models/m:generateContent', file: 'request_gemini.json' },
};

function body(route) {
  const text = fs.readFileSync(path.join(FIX, route.file), 'utf8').replace(/\n$/, '');
  return route.model ? text.replace(route.model, '"model":"m"') : text;
}

let upstream, upPort, seen, luaDir;

before(async () => {
  seen = [];
  upstream = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    seen.push({ worker: req.headers['x-cpx-worker'], body: Buffer.concat(chunks).toString('utf8') });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      id: 'chatcmpl-1', object: 'chat.completion', created: 1700000000, model: 'up-model',
      choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    }));
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  upPort = upstream.address().port;
  luaDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-fidelity-'));
  fs.mkdirSync(path.join(luaDir, 'middleware'));
  fs.writeFileSync(path.join(luaDir, 'middleware/worker_tag.lua'), TAG);
});

after(async () => {
  await new Promise((r) => upstream.close(r));
  fs.rmSync(luaDir, { recursive: true, force: true });
});

// One request on a connection of its own (no keep-alive agent).
function post(port, p, text) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port, path: p, method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client',
                 'x-goog-api-key': 'sk-client', 'content-length': Buffer.byteLength(text) },
    }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, data }));
    });
    req.on('error', reject);
    req.end(text);
  });
}

async function round() {
  const proxy = await startProxy({
    apiKeys: ['sk-client'],
    openaiCompat: [{ name: 'up', baseUrl: `http://127.0.0.1:${upPort}/v1`, keys: ['up-key'],
                     models: [{ name: 'up-model', alias: 'm' }] }],
    extra: { workers: 2, lua: { paths: [luaDir], middleware: [{ name: 'worker_tag' }] } },
  });
  const out = {};
  try {
    for (const [fmt, route] of Object.entries(ROUTES)) {
      seen.length = 0;
      const rs = await Promise.all(Array.from({ length: N }, () => post(proxy.port, route.path, body(route))));
      for (const r of rs) assert.equal(r.status, 200, `${fmt}: ${r.data}`);
      assert.equal(seen.length, N, fmt);
      out[fmt] = seen.slice();
    }
  } finally {
    const ex = await proxy.stop();
    assert.equal(ex.code, 0, proxy.stderr().slice(-2000));
  }
  return out;
}

test('two workers and a restart send the same upstream bytes, carried parts intact', T(), async () => {
  const first = await round();
  const second = await round();
  for (const fmt of Object.keys(ROUTES)) {
    const all = [...first[fmt], ...second[fmt]];
    const workers = new Set(all.map((s) => s.worker));
    assert.equal(workers.size, 2, `${fmt}: served by workers ${[...workers]}`);
    const bytes = new Set(all.map((s) => s.body));
    assert.equal(bytes.size, 1, `${fmt}: ${bytes.size} different upstream bodies:\n${[...bytes].join('\n')}`);
    const [b] = bytes;
    // Chat carries a tool call's arguments as a JSON string.
    assert.ok(b.includes(JSON.stringify(ARGS)), `${fmt}: arguments changed: ${b}`);
    const props = ['"zeta":{', '"alpha":{', '"reasoning":{', '"answer":{'].map((k) => b.indexOf(k));
    assert.ok(props.every((p, i) => p > 0 && (i === 0 || p > props[i - 1])), `${fmt}: schema order: ${b}`);
    assert.equal(JSON.parse(b).messages.find((m) => m.role === 'user').content.length > 0, true);
  }
});
