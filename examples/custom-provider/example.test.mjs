// examples/custom-provider: the override of providers/openai_compat.lua
// replaces the built-in; the "acme" entry gets its quirks, the other entry
// is untouched. Run by spec/e2e/scripting.test.mjs.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMock } from '../../spec/e2e/lib/mock_upstream.mjs';
import { startExample, post, sseData } from '../test_helper.mjs';

const dir = path.dirname(fileURLToPath(import.meta.url));
let mock, proxy;

before(async () => {
  mock = await startMock();
  proxy = await startExample(dir, mock.url);
});
after(async () => {
  await proxy?.stop();
  await mock?.close();
});

test('example custom-provider: Acme gets its header, signature and renamed field', async () => {
  mock.reply({ text: 'hi from acme' });
  const n = mock.requests.length;
  const r = await post(proxy, '/v1/chat/completions',
    { model: 'acme', max_tokens: 50, messages: [{ role: 'user', content: 'hello' }] });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].message.content, 'hi from acme');
  const up = mock.requests[n];
  assert.equal(up.path, '/v1/chat/completions');
  assert.equal(up.headers['x-acme-client'], 'cliproxy');
  assert.equal(up.body.max_output_tokens, 50);
  assert.equal(up.body.max_tokens, undefined);
  assert.equal(up.body.model, 'acme-large');
  const sig = crypto.createHmac('sha256', 'acme-key').update(up.rawBody).digest('hex');
  assert.equal(up.headers['x-acme-signature'], sig);
});

test('example custom-provider: streams work and drop stream_options for Acme', async () => {
  mock.reply({ text: 'one two three' });
  const n = mock.requests.length;
  const r = await post(proxy, '/v1/chat/completions', {
    model: 'acme', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'hello' }],
  });
  assert.equal(r.status, 200);
  const text = sseData(r.text).map((c) => c.choices?.[0]?.delta?.content || '').join('');
  assert.equal(text, 'one two three');
  assert.equal(mock.requests[n].body.stream_options, undefined);
});

test('example custom-provider: entries without quirks keep the built-in behaviour', async () => {
  mock.reply({ text: 'plain' });
  const n = mock.requests.length;
  const r = await post(proxy, '/v1/chat/completions',
    { model: 'other', max_tokens: 9, messages: [{ role: 'user', content: 'hello' }] });
  assert.equal(r.status, 200, r.text);
  const up = mock.requests[n];
  assert.equal(up.headers['x-acme-signature'], undefined);
  assert.equal(up.body.max_tokens, 9);
  assert.equal(up.headers.authorization, 'Bearer other-key');
});
