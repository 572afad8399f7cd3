// Same-format requests on the Lua pipeline reach the upstream as the client
// wrote them: a Gemini body is never decoded (its model is in the path), an
// Anthropic body only has its model rewritten while claude.raw_ok finds
// none of its fix-ups needed. Key order, number text, escapes and
// whitespace are kept byte for byte; words that only appear in text do not
// force a decode; a structurally broken Gemini body is a 400 in Gemini's
// envelope before anything is sent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

let mock, proxy;

before(async () => {
  mock = await startMock({ models: ['up-gem', 'up-claude'] });
  proxy = await startProxy({
    extra: {
      'request-retry': 0,
      'gemini-api-key': [{ 'api-key': 'g-key', 'base-url': mock.url, models: [{ name: 'up-gem', alias: 'rr-gem' }] }],
      'claude-api-key': [{ 'api-key': 'c-key', 'base-url': mock.url, models: [{ name: 'up-claude', alias: 'rr-claude' }] }],
    },
  });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

async function post(path, text, headers = {}) {
  const r = await fetch(`${proxy.url}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: text,
  });
  return { status: r.status, text: await r.text() };
}

test('a Gemini body reaches the upstream byte for byte', async () => {
  const text = '{ "generationConfig":{"temperature":1.10,"seed":12345678901234567891,"topP":-0,"x":1e-7},\n' +
    '  "zeta":{"b":1,"a":2}, "contents":[{"role":"user","parts":[{"text":"h\\u00e9 \\ud83d\\ude00 \\"q\\""}]}] }';
  mock.reset();
  const r = await post('/v1beta/models/rr-gem:generateContent', text);
  assert.equal(r.status, 200, r.text);
  assert.ok(JSON.parse(r.text).candidates, r.text);
  const up = mock.last();
  assert.equal(up.path, '/v1beta/models/up-gem:generateContent');
  assert.equal(up.rawBody, text);
});

test('a broken Gemini body is a 400 in Gemini\'s envelope and is not sent', async () => {
  mock.reset();
  const r = await post('/v1beta/models/rr-gem:generateContent', '{"contents":[{"parts":[}');
  assert.equal(r.status, 400);
  const j = JSON.parse(r.text);
  assert.equal(j.error.code, 400);
  assert.match(j.error.message, /invalid JSON body/);
  assert.equal(mock.requests.length, 0);
});

test('an Anthropic body whose text names the fix-up fields keeps its bytes (only the model changes)', async () => {
  const rest = ',"max_tokens":64, "messages":[{"role":"user","content":"say \\"betas\\", \\"thinking\\" and \\"temperature\\": 1.10"}],' +
    '"tools":[{"name":"t","input_schema":{"type":"object","properties":{"zeta":{"type":"number"},"alpha":{"type":"string"}}}}]}';
  mock.reset();
  const r = await post('/v1/messages', '{"model":"rr-claude"' + rest, { 'anthropic-version': '2023-06-01' });
  assert.equal(r.status, 200, r.text);
  assert.equal(mock.last().rawBody, '{"model":"up-claude"' + rest);
});

test('top-level body betas still go through the fix-up (taken out of the body)', async () => {
  mock.reset();
  const r = await post('/v1/messages', '{"model":"rr-claude","max_tokens":8,"betas":["rr-beta-1"],"messages":[{"role":"user","content":"hi"}]}',
    { 'anthropic-version': '2023-06-01' });
  assert.equal(r.status, 200, r.text);
  const up = mock.last();
  assert.equal(up.body.model, 'up-claude');
  assert.equal(up.body.betas, undefined, up.rawBody);
});
