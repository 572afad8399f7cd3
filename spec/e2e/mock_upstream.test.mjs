// Checks the mock upstream itself: each official SDK, pointed straight at the
// mock, must parse what it sends. If these fail, the e2e tests through cliproxy
// would prove nothing.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startMock } from './lib/mock_upstream.mjs';

let mock, oai, ant, gai;
const T = { timeout: 10000 };
const weather = { city: 'Paris', unit: 'celsius', days: [1, 2, 3] };
const time = { tz: 'Europe/Paris' };

before(async () => {
  mock = await startMock();
  oai = new OpenAI({ baseURL: `${mock.url}/v1`, apiKey: 'k', maxRetries: 0 });
  ant = new Anthropic({ baseURL: mock.url, apiKey: 'k', maxRetries: 0 });
  gai = new GoogleGenAI({ apiKey: 'k', httpOptions: { baseUrl: mock.url } });
});
after(async () => { await mock.close(); });

test('openai chat: non-stream text, usage, thinking', T, async () => {
  mock.reset().reply({ text: 'Hello world', thinking: 'hmm', usage: { input: 3, output: 9 } });
  const r = await oai.chat.completions.create({ model: 'm1', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.choices[0].message.content, 'Hello world');
  assert.equal(r.choices[0].message.reasoning_content, 'hmm');
  assert.equal(r.model, 'm1');
  assert.deepEqual([r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens], [3, 9, 12]);
  assert.equal(mock.last().headers.authorization, 'Bearer k');
  assert.equal(mock.last().format, 'openai');
});

test('openai chat: stream with include_usage, parallel interleaved tool calls', T, async () => {
  mock.reset().reply({ text: 'Let me check.', interleave: true, argChunks: 4, tools: [{ name: 'get_weather', args: weather }, { name: 'get_time', args: time }] });
  const s = oai.chat.completions.stream({ model: 'm1', messages: [{ role: 'user', content: 'hi' }], stream_options: { include_usage: true } });
  const chunks = [];
  for await (const c of s) chunks.push(c);
  const final = await s.finalChatCompletion();
  const calls = final.choices[0].message.tool_calls;
  assert.equal(final.choices[0].message.content, 'Let me check.');
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(calls.map((c) => c.function.name), ['get_weather', 'get_time']);
  assert.deepEqual(JSON.parse(calls[0].function.arguments), weather);
  assert.deepEqual(JSON.parse(calls[1].function.arguments), time);
  assert.equal(chunks.at(-1).choices.length, 0);
  assert.equal(chunks.at(-1).usage.total_tokens, 18);
  assert.ok(chunks.length > 10, `streamed in ${chunks.length} chunks`);
});

test('openai responses: stream and non-stream', T, async () => {
  mock.reset().reply({ text: 'Hi there', thinking: 'brief thought', tools: [{ name: 'get_weather', args: weather }] });
  const s = oai.responses.stream({ model: 'm2', input: 'hi', instructions: 'be brief' });
  const types = [];
  let last = -1;
  for await (const ev of s) {
    types.push(ev.type);
    assert.ok(ev.sequence_number > last);
    last = ev.sequence_number;
  }
  const fin = await s.finalResponse();
  assert.equal(fin.output_text, 'Hi there');
  assert.equal(fin.instructions, 'be brief');
  const fc = fin.output.find((o) => o.type === 'function_call');
  assert.deepEqual(JSON.parse(fc.arguments), weather);
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
  assert.ok(types.includes('response.reasoning_summary_text.delta'));
  const r = await oai.responses.create({ model: 'm2', input: 'hi' });
  assert.equal(r.output_text, 'Hi there');
});

test('anthropic messages: stream with thinking and parallel tool_use; non-stream', T, async () => {
  mock.reset().reply({ text: 'Checking', thinking: 'let me think', tools: [{ name: 'get_weather', args: weather }, { name: 'get_time', args: time }] });
  const s = ant.messages.stream({ model: 'claude-x', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] });
  const m = await s.finalMessage();
  assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'text', 'tool_use', 'tool_use']);
  assert.equal(m.content[0].thinking, 'let me think');
  assert.ok(m.content[0].signature);
  assert.deepEqual(m.content[2].input, weather);
  assert.deepEqual(m.content[3].input, time);
  assert.equal(m.stop_reason, 'tool_use');
  assert.equal(m.usage.output_tokens, 7);
  const r = await ant.messages.create({ model: 'claude-x', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.content[1].text, 'Checking');
  // @anthropic-ai/sdk 1.14.0 sends its apiKey as a Bearer token (as in the captures).
  assert.equal(mock.last().headers.authorization, 'Bearer k');
});

test('gemini: generateContent, streamGenerateContent (SSE, CRLF frames) and JSON-array stream', T, async () => {
  mock.reset().reply({ text: 'Gemini says hi', thinking: 'thinking...', tools: [{ name: 'get_weather', args: weather }] });
  const r = await gai.models.generateContent({ model: 'gemini-x', contents: 'hi' });
  assert.equal(r.text, 'Gemini says hi');
  assert.deepEqual(r.functionCalls[0].args, weather);
  assert.equal(mock.last().model, 'gemini-x');

  const s = await gai.models.generateContentStream({ model: 'gemini-x', contents: 'hi' });
  let text = '';
  const calls = [];
  for await (const c of s) {
    for (const p of c.candidates?.[0]?.content?.parts ?? []) {
      if (p.text && !p.thought) text += p.text;
      if (p.functionCall) calls.push(p.functionCall);
    }
  }
  assert.equal(text, 'Gemini says hi');
  assert.deepEqual(calls[0].args, weather);
  assert.equal(mock.last().query.alt, 'sse');

  const raw = await fetch(`${mock.url}/v1beta/models/gemini-x:streamGenerateContent`, { method: 'POST', body: JSON.stringify({ contents: [] }) });
  const arr = JSON.parse(await raw.text());
  assert.ok(Array.isArray(arr) && arr.length > 2);
  assert.equal(arr.at(-1).candidates[0].finishReason, 'STOP');

  const sse = await (await fetch(`${mock.url}/v1beta/models/gemini-x:streamGenerateContent?alt=sse`, { method: 'POST', body: '{}' })).text();
  assert.match(sse, /^data: \{.*\}\r\n\r\ndata: /);
});

test('errors in each envelope reach each SDK as its error class', T, async () => {
  mock.reset().reply({ error: { status: 429, message: 'slow down', headers: { 'retry-after': '7' } } });
  await assert.rejects(oai.chat.completions.create({ model: 'm', messages: [] }), (e) => e instanceof OpenAI.RateLimitError && e.error.type === 'rate_limit_error' && e.headers.get('retry-after') === '7');
  await assert.rejects(ant.messages.create({ model: 'm', max_tokens: 1, messages: [] }), (e) => e instanceof Anthropic.RateLimitError && e.error.error.type === 'rate_limit_error');
  mock.reply({ error: { status: 500 } });
  await assert.rejects(gai.models.generateContent({ model: 'g', contents: 'x' }), (e) => e.status === 500 && /INTERNAL/.test(e.message));
});

test('stream error after the first byte: in-band error events', T, async () => {
  mock.reset().reply({ text: 'one two three four five', errorAfter: 3, streamError: { message: 'boom', status: 529 } });
  const s = await oai.chat.completions.create({ model: 'm', messages: [], stream: true });
  await assert.rejects((async () => { for await (const _ of s); })(), /boom/);
  const a = ant.messages.stream({ model: 'm', max_tokens: 1, messages: [] });
  await assert.rejects(a.finalMessage(), /boom/);
});

test('mid-stream cut and client abort are recorded with timestamps', T, async () => {
  mock.reset().reply({ text: 'a b c d e f', cutAfter: 2 });
  const s = await oai.chat.completions.create({ model: 'm', messages: [], stream: true });
  await assert.rejects((async () => { for await (const _ of s); })());
  mock.reset().reply({ endless: { intervalMs: 2 } });
  const ac = new AbortController();
  const st = await oai.chat.completions.create({ model: 'm', messages: [], stream: true }, { signal: ac.signal });
  let n = 0;
  let t0;
  // The SDK ends the iteration quietly when its request is aborted.
  for await (const _ of st) if (++n === 5) { t0 = performance.now(); ac.abort(); }
  const rec = mock.last();
  await mock.waitForClose(rec, 2000);
  assert.ok((rec.abortedAt ?? rec.closedAt) - t0 < 2000);
  assert.ok(rec.framesOut >= 5);
});

test('endless stream honours backpressure: a reader that stops stalls the writer', T, async () => {
  mock.reset().reply({ endless: { intervalMs: 1, bytes: 16384, burstBytes: 1 << 20 } });
  const sock = net.connect(mock.port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const body = JSON.stringify({ model: 'm', stream: true, messages: [] });
  sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  sock.pause();
  const rec = await mock.waitForRequest();
  await new Promise((r) => setTimeout(r, 700));
  const a = rec.bytesOut;
  await new Promise((r) => setTimeout(r, 500));
  const b = rec.bytesOut;
  assert.ok(rec.writeStalls > 0, 'writer saw backpressure');
  assert.ok(b - a < 1 << 20, `writer stalled (grew ${b - a} bytes in 0.5 s, ${b} total)`);
  sock.destroy();
  await mock.waitForClose(rec, 2000);
});
