// examples/custom-translation: the pairs/ override renders Claude thinking
// inline for Chat clients, streamed and not; Claude clients of the same
// upstream keep thinking blocks. Run by spec/e2e/scripting.test.mjs.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
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

const ask = { model: 'sonnet', messages: [{ role: 'user', content: 'why?' }] };

test('example custom-translation: non-stream thinking is inline in content', async () => {
  mock.reply({ thinking: 'Let me think.', text: 'Because.' });
  const r = await post(proxy, '/v1/chat/completions', ask);
  assert.equal(r.status, 200, r.text);
  const msg = r.json.choices[0].message;
  assert.equal(msg.content, '<think>Let me think.</think>\n\nBecause.');
  assert.equal(msg.reasoning_content, undefined);
  assert.equal(r.json.choices[0].finish_reason, 'stop');
  assert.ok(r.json.usage.prompt_tokens > 0);
});

test('example custom-translation: streamed thinking is inline in content deltas', async () => {
  mock.reply({ thinking: 'Step one. Step two.', text: 'Done now.' });
  const r = await post(proxy, '/v1/chat/completions', { ...ask, stream: true });
  assert.equal(r.status, 200);
  const chunks = sseData(r.text);
  const content = chunks.map((c) => c.choices?.[0]?.delta?.content || '').join('');
  assert.equal(content, '<think>Step one. Step two.</think>\n\nDone now.');
  assert.ok(chunks.every((c) => !c.choices?.[0]?.delta?.reasoning_content));
  assert.ok(r.text.trimEnd().endsWith('data: [DONE]'));
});

test('example custom-translation: Claude clients still get thinking blocks', async () => {
  mock.reply({ thinking: 'Hmm.', text: 'Yes.' });
  const r = await post(proxy, '/v1/messages', { ...ask, max_tokens: 2000,
    thinking: { type: 'enabled', budget_tokens: 1024 } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content[0].type, 'thinking');
  assert.equal(r.json.content[1].text, 'Yes.');
});
