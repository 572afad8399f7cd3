// examples/request-rewriting: forced temperature, injected system prompt,
// routing by X-Account. Run by spec/e2e/scripting.test.mjs.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMock } from '../../spec/e2e/lib/mock_upstream.mjs';
import { startExample, post } from '../test_helper.mjs';

const dir = path.dirname(fileURLToPath(import.meta.url));
let mock, proxy;

before(async () => {
  mock = await startMock();
  mock.reply({ text: 'ok' });
  proxy = await startExample(dir, mock.url);
});
after(async () => {
  await proxy?.stop();
  await mock?.close();
});

const SYS = 'You are a support assistant for Example Corp. Answer briefly.';

test('example request-rewriting: temperature forced and system prompt injected', async () => {
  const n = mock.requests.length;
  const r = await post(proxy, '/v1/chat/completions',
    { model: 'gpt', temperature: 1.5, messages: [{ role: 'user', content: 'hello' }] });
  assert.equal(r.status, 200, r.text);
  const body = mock.requests[n].body;
  assert.equal(body.temperature, 0.2);
  assert.deepEqual(body.messages[0], { role: 'system', content: SYS });
  assert.equal(body.messages[1].content, 'hello');
});

test('example request-rewriting: also for a Claude client (translated to Chat)', async () => {
  const n = mock.requests.length;
  const r = await post(proxy, '/v1/messages',
    { model: 'gpt', max_tokens: 100, system: 'Be nice.', messages: [{ role: 'user', content: 'hello' }] });
  assert.equal(r.status, 200, r.text);
  const body = mock.requests[n].body;
  assert.equal(body.temperature, 0.2);
  assert.equal(body.messages[0].role, 'system');
  assert.ok(body.messages[0].content.startsWith(SYS), body.messages[0].content);
  assert.ok(body.messages[0].content.includes('Be nice.'));
});

test('example request-rewriting: X-Account routes to the chosen account', async () => {
  const n = mock.requests.length;
  for (let i = 0; i < 4; i++) {
    const r = await post(proxy, '/v1/chat/completions',
      { model: 'gpt', messages: [{ role: 'user', content: 'hi' }] }, { 'X-Account': 'team-b' });
    assert.equal(r.status, 200, r.text);
  }
  const seen = mock.requests.slice(n).map((q) => q.headers.authorization);
  assert.deepEqual(seen, Array(4).fill('Bearer key-team-b'));
  assert.ok(mock.requests.slice(n).every((q) => q.path === '/b/v1/chat/completions'));
  // without the header the pool alternates between both accounts
  const m = mock.requests.length;
  for (let i = 0; i < 4; i++) {
    await post(proxy, '/v1/chat/completions', { model: 'gpt', messages: [{ role: 'user', content: 'hi' }] });
  }
  const keys = new Set(mock.requests.slice(m).map((q) => q.headers.authorization));
  assert.deepEqual([...keys].sort(), ['Bearer key-team-a', 'Bearer key-team-b']);
});

test('example request-rewriting: an unknown X-Account is refused in the client format', async () => {
  const r = await post(proxy, '/v1/messages',
    { model: 'gpt', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }, { 'X-Account': 'team-z' });
  assert.equal(r.status, 400);
  assert.equal(r.json.type, 'error');
  assert.equal(r.json.error.message, "unknown X-Account value 'team-z'");
});
