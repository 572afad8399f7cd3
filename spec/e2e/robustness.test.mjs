// Bad input never crashes the process: random bytes on the socket, broken
// JSON, and well-formed JSON of the wrong shape at every inference endpoint
// get a 4xx/5xx in the client's envelope, and the server keeps serving.
// Deterministic (fixed seed), bounded in count and time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

let mock, proxy;
before(async () => {
  mock = await startMock();
  mock.reply({ text: 'ok' });
  proxy = await startProxy({
    openaiCompat: [{ name: 'm', baseUrl: `${mock.url}/v1`, keys: ['k'], models: ['chat-m'] }],
    extra: {
      'claude-api-key': [{ 'api-key': 'a', 'base-url': mock.url, models: [{ name: 'c', alias: 'claude-m' }] }],
      'gemini-api-key': [{ 'api-key': 'g', 'base-url': mock.url, models: [{ name: 'g', alias: 'gem-m' }] }],
      'codex-api-key': [{ 'api-key': 'x', 'base-url': `${mock.url}/v1`, models: [{ name: 'x', alias: 'resp-m' }] }],
    },
  });
});
after(async () => {
  const ex = await proxy?.stop();
  await mock?.close();
  assert.equal(ex?.signal ?? null, null, 'the server was not killed by a signal');
});

let seed = 20261126;
const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 2 ** 32; };
const pick = (a) => a[Math.floor(rnd() * a.length)];

function raw(bytes, ms = 1500) {
  return new Promise((resolve) => {
    const s = net.connect(proxy.port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const done = () => { s.destroy(); resolve(data.toString('latin1')); };
    s.on('data', (d) => { data = Buffer.concat([data, d]); });
    s.on('close', done);
    s.on('error', done);
    s.setTimeout(ms, done);
    s.write(bytes, () => s.end());
  });
}

async function healthy() {
  const r = await fetch(`${proxy.url}/healthz`, { signal: AbortSignal.timeout(3000) });
  assert.equal(r.status, 200);
}

test('random bytes and mangled requests on the socket', { timeout: 60000 }, async () => {
  const valid = Buffer.from('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{"model":"chat-m","x":[1]}\n');
  for (let i = 0; i < 150; i++) {
    let b;
    if (i % 3 === 0) {
      b = Buffer.alloc(1 + Math.floor(rnd() * 600));
      for (let k = 0; k < b.length; k++) b[k] = Math.floor(rnd() * 256);
    } else {
      // flip, insert or cut bytes of a valid request
      b = Buffer.from(valid);
      for (let m = 0; m < 1 + Math.floor(rnd() * 4); m++) {
        const at = Math.floor(rnd() * b.length);
        const op = rnd();
        if (op < 0.4) b[at] = Math.floor(rnd() * 256);
        else if (op < 0.7) b = Buffer.concat([b.subarray(0, at), Buffer.from([Math.floor(rnd() * 256)]), b.subarray(at)]);
        else b = b.subarray(0, at);
      }
    }
    const out = await raw(b, 300);
    if (out) assert.match(out, /^HTTP\/1\.1 [1-5]\d\d /, `answer to case ${i}: ${out.slice(0, 80)}`);
  }
  await healthy();
});

const ENDPOINTS = [
  ['/v1/chat/completions', 'chat-m', 'openai'],
  ['/v1/responses', 'resp-m', 'openai'],
  ['/v1/messages', 'claude-m', 'claude'],
  ['/v1/messages/count_tokens', 'claude-m', 'claude'],
  ['/v1/completions', 'chat-m', 'openai'],
  ['/v1beta/models/gem-m:generateContent', null, 'gemini'],
  ['/v1beta/models/gem-m:streamGenerateContent?alt=sse', null, 'gemini'],
  ['/v1beta/models/gem-m:countTokens', null, 'gemini'],
];

const WEIRD = [
  5, 'x', null, true, [], {}, [1, 'a', null], { a: { b: [{}] } }, -1, 1e308, '\u0000', 'é'.repeat(50),
];
const FIELDS = ['messages', 'contents', 'input', 'tools', 'system', 'systemInstruction', 'tool_choice',
  'max_tokens', 'stream', 'thinking', 'reasoning', 'generationConfig', 'response_format', 'stop', 'temperature',
  'instructions', 'prompt', 'metadata', 'output_config'];

function envelopeOk(kind, status, text) {
  let j;
  try { j = JSON.parse(text); } catch { return false; }
  if (kind === 'claude') return j.type === 'error' && typeof j.error?.message === 'string';
  if (kind === 'gemini') return typeof j.error?.message === 'string' && typeof j.error?.code === 'number';
  return typeof j.error?.message === 'string';
}

test('broken and oddly shaped JSON at every endpoint: an error in the client envelope or a real answer', { timeout: 120000 }, async () => {
  let answered = 0;
  for (let i = 0; i < 240; i++) {
    const [path, model, kind] = ENDPOINTS[i % ENDPOINTS.length];
    let body;
    const mode = i % 4;
    if (mode === 0) {
      body = JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }).slice(0, Math.floor(rnd() * 40));
    } else {
      const b = { model: model ?? undefined, max_tokens: 5 };
      for (let n = 0; n < 1 + Math.floor(rnd() * 4); n++) b[pick(FIELDS)] = pick(WEIRD);
      if (mode === 3) b.messages = [{ role: pick(['user', 'assistant', 'tool', 'system', 'bogus', 5]), content: pick(WEIRD) }];
      body = JSON.stringify(b);
    }
    const r = await fetch(`${proxy.url}${path}`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body, signal: AbortSignal.timeout(10000),
    });
    const text = await r.text();
    if (r.status >= 400) {
      assert.ok(r.status < 600, `${path} ${body}: status ${r.status}`);
      assert.ok(envelopeOk(kind, r.status, text), `${path} ${body}: ${r.status} ${text.slice(0, 200)}`);
    } else {
      answered++;
    }
  }
  assert.ok(answered > 0, 'some oddly shaped requests are still served');
  await healthy();
  assert.doesNotMatch(proxy.stderr(), /panic|Segmentation|AddressSanitizer/);
});
