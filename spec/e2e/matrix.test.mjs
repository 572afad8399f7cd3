// Issue 3 end to end: every client format x every upstream format through the
// real cliproxy binary, with the official SDKs as clients (openai 6.49.0 for
// Chat Completions and Responses, @anthropic-ai/sdk 1.14.0, @google/genai 2.32.0)
// and one in-process mock that speaks all four upstream formats.
//
// The matrix is generated from three tables:
//   CLIENTS    how each SDK sends a neutral request and what it parsed back
//   UPSTREAMS  the config entry of each upstream format and how to read what
//              the mock received
//   SCENARIOS  text, system prompt, tool call, tool result round trip,
//              thinking, image input (base64; URL for the formats that carry it)
// x stream and non-stream. Every case asserts what the SDK parsed and what the
// mock received upstream. Then: mid-stream upstream failures, cliproxy's own
// errors per client envelope, count endpoints, the WebSocket probe (426) and
// legacy /v1/completions.
//
//   node --test matrix.test.mjs
//   node --test --test-name-pattern='claude→gemini' matrix.test.mjs

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy } from './lib/proxy.mjs';

const CLIENT_KEY = 'sk-client-matrix-5c1e';
const T = (ms = 15000) => ({ timeout: ms });

// A 1x1 PNG.
const PNG_B64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
const IMG_URL = 'https://images.example.test/cat-4f2a.png';

// ------------------------------------------------------------------ upstreams

// Each upstream format is one config entry on the same mock; the client uses
// the alias, the mock must see the name.
const UPSTREAMS = {
  openai: { alias: 'mx-openai', name: 'mock-openai-up', key: 'up-openai-key' },
  responses: { alias: 'mx-responses', name: 'mock-responses-up', key: 'up-codex-key' },
  claude: { alias: 'mx-claude', name: 'mock-claude-up', key: 'up-claude-key' },
  gemini: { alias: 'mx-gemini', name: 'mock-gemini-up', key: 'up-gemini-key' },
};
const UP_FORMATS = Object.keys(UPSTREAMS);

const textOf = (c) => {
  if (c == null) return '';
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map(textOf).join('');
  if (typeof c === 'object') return c.text ?? c.output ?? (c.content != null ? textOf(c.content) : JSON.stringify(c));
  return String(c);
};
const parseArgs = (a) => (typeof a === 'string' ? (a ? JSON.parse(a) : {}) : a ?? {});
const dataUrl = (s) => {
  const m = /^data:([^;]+);base64,(.*)$/.exec(s || '');
  return m ? { mime: m[1], data: m[2] } : { url: s };
};

// What the mock received, read back into one shape:
// { model, system, userText, images[{mime,data}|{url}], tools[names], calls[{id,name,args}],
//   results[{id,name,content}], thinking (the upstream's reasoning request or null), stream }
const READ_UPSTREAM = {
  openai(rec) {
    const b = rec.body;
    const out = { model: b.model, system: '', userText: '', images: [], calls: [], results: [], tools: (b.tools || []).map((t) => t.function?.name), thinking: b.reasoning_effort ?? null };
    for (const m of b.messages || []) {
      if (m.role === 'system' || m.role === 'developer') out.system += textOf(m.content);
      if (m.role === 'user') {
        for (const p of Array.isArray(m.content) ? m.content : [{ type: 'text', text: m.content }]) {
          if (p.type === 'text') out.userText += p.text;
          if (p.type === 'image_url') out.images.push(dataUrl(p.image_url?.url));
        }
      }
      if (m.role === 'assistant') for (const c of m.tool_calls || []) out.calls.push({ id: c.id, name: c.function.name, args: parseArgs(c.function.arguments) });
      if (m.role === 'tool') out.results.push({ id: m.tool_call_id, content: textOf(m.content) });
    }
    return out;
  },
  responses(rec) {
    const b = rec.body;
    const out = { model: b.model, system: b.instructions ?? '', userText: '', images: [], calls: [], results: [], tools: (b.tools || []).map((t) => t.name), thinking: b.reasoning?.effort ?? null };
    const input = typeof b.input === 'string' ? [{ role: 'user', content: b.input }] : b.input || [];
    for (const it of input) {
      const type = it.type ?? 'message';
      if (type === 'message') {
        const parts = typeof it.content === 'string' ? [{ type: 'input_text', text: it.content }] : it.content || [];
        if (it.role === 'system' || it.role === 'developer') out.system += textOf(parts);
        if (it.role === 'user') {
          for (const p of parts) {
            if (p.type === 'input_text') out.userText += p.text;
            if (p.type === 'input_image') out.images.push(dataUrl(p.image_url));
          }
        }
      }
      if (type === 'function_call') out.calls.push({ id: it.call_id, name: it.name, args: parseArgs(it.arguments) });
      if (type === 'function_call_output') out.results.push({ id: it.call_id, content: textOf(it.output) });
    }
    return out;
  },
  claude(rec) {
    const b = rec.body;
    const out = { model: b.model, system: textOf(b.system), userText: '', images: [], calls: [], results: [], tools: (b.tools || []).map((t) => t.name), thinking: b.thinking?.type && b.thinking.type !== 'disabled' ? b.thinking.type : null };
    for (const m of b.messages || []) {
      const parts = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content || [];
      if (m.role === 'system') out.system += textOf(parts);
      for (const p of parts) {
        if (m.role === 'user' && p.type === 'text') out.userText += p.text;
        if (p.type === 'image') out.images.push(p.source?.type === 'base64' ? { mime: p.source.media_type, data: p.source.data } : { url: p.source?.url });
        if (p.type === 'tool_use') out.calls.push({ id: p.id, name: p.name, args: p.input });
        if (p.type === 'tool_result') out.results.push({ id: p.tool_use_id, content: textOf(p.content) });
      }
    }
    return out;
  },
  gemini(rec) {
    const b = rec.body;
    const out = { model: rec.model, system: textOf(b.systemInstruction?.parts), userText: '', images: [], calls: [], results: [], tools: [], thinking: b.generationConfig?.thinkingConfig ?? null };
    for (const t of b.tools || []) for (const d of t.functionDeclarations || []) out.tools.push(d.name);
    for (const c of b.contents || []) {
      for (const p of c.parts || []) {
        if (c.role !== 'model' && p.text != null && !p.thought) out.userText += p.text;
        if (p.inlineData) out.images.push({ mime: p.inlineData.mimeType, data: p.inlineData.data });
        if (p.fileData) out.images.push({ url: p.fileData.fileUri, mime: p.fileData.mimeType });
        if (p.functionCall) out.calls.push({ id: p.functionCall.id, name: p.functionCall.name, args: p.functionCall.args });
        if (p.functionResponse) out.results.push({ id: p.functionResponse.id, name: p.functionResponse.name, content: JSON.stringify(p.functionResponse.response) });
      }
    }
    return out;
  },
};

// ------------------------------------------------------------------- clients

// A neutral request: { system, user, image: 'b64'|'url', tools: [decl], history:
// [{ call: {id,name,args} }, { result: {id,name,content} }], thinking: bool }
const WEATHER_TOOL = {
  name: 'get_weather',
  description: 'Current weather for a city',
  schema: { type: 'object', properties: { city: { type: 'string', description: 'City name' }, days: { type: 'integer' } }, required: ['city'] },
};

let proxy, mock, oa, an, gg;

// Each client returns { text, thinking, calls: [{id,name,args}] } from what its SDK parsed.
const CLIENTS = {
  chat: {
    carriesImageUrl: true,
    async run(model, q, stream) {
      const user = q.image
        ? [{ type: 'text', text: q.user }, { type: 'image_url', image_url: { url: q.image === 'url' ? IMG_URL : `data:image/png;base64,${PNG_B64}` } }]
        : q.user;
      const messages = [];
      if (q.system) messages.push({ role: 'system', content: q.system });
      messages.push({ role: 'user', content: user });
      for (const h of q.history || []) {
        if (h.call) messages.push({ role: 'assistant', content: null, tool_calls: [{ id: h.call.id, type: 'function', function: { name: h.call.name, arguments: JSON.stringify(h.call.args) } }] });
        if (h.result) messages.push({ role: 'tool', tool_call_id: h.result.id, content: h.result.content });
      }
      const req = { model, messages, max_tokens: 4096 };
      if (q.tools) req.tools = q.tools.map((t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.schema } }));
      if (q.thinking) req.reasoning_effort = 'high';
      if (!stream) {
        const r = await oa.chat.completions.create(req);
        assert.equal(r.object, 'chat.completion');
        const m = r.choices[0].message;
        return { text: m.content ?? '', thinking: m.reasoning_content ?? '', calls: (m.tool_calls || []).map((c) => ({ id: c.id, name: c.function.name, args: parseArgs(c.function.arguments) })), finish: r.choices[0].finish_reason };
      }
      const s = await oa.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
      const out = { text: '', thinking: '', calls: [], finish: null };
      const acc = [];
      for await (const ch of s) {
        assert.equal(ch.object, 'chat.completion.chunk');
        const c = ch.choices[0];
        if (!c) continue;
        if (c.delta?.content) out.text += c.delta.content;
        if (c.delta?.reasoning_content) out.thinking += c.delta.reasoning_content;
        for (const tc of c.delta?.tool_calls || []) {
          const a = (acc[tc.index] ??= { id: '', name: '', args: '' });
          if (tc.id) a.id = tc.id;
          if (tc.function?.name) a.name += tc.function.name;
          if (tc.function?.arguments) a.args += tc.function.arguments;
        }
        if (c.finish_reason) out.finish = c.finish_reason;
      }
      out.calls = acc.map((a) => ({ id: a.id, name: a.name, args: parseArgs(a.args) }));
      return out;
    },
  },
  responses: {
    carriesImageUrl: true,
    async run(model, q, stream) {
      const content = [{ type: 'input_text', text: q.user }];
      if (q.image) content.push({ type: 'input_image', detail: 'auto', image_url: q.image === 'url' ? IMG_URL : `data:image/png;base64,${PNG_B64}` });
      const input = [{ type: 'message', role: 'user', content }];
      for (const h of q.history || []) {
        if (h.call) input.push({ type: 'function_call', call_id: h.call.id, name: h.call.name, arguments: JSON.stringify(h.call.args) });
        if (h.result) input.push({ type: 'function_call_output', call_id: h.result.id, output: h.result.content });
      }
      const req = { model, input, max_output_tokens: 4096 };
      if (q.system) req.instructions = q.system;
      if (q.tools) req.tools = q.tools.map((t) => ({ type: 'function', name: t.name, description: t.description, parameters: t.schema, strict: false }));
      if (q.thinking) req.reasoning = { effort: 'high', summary: 'auto' };
      let r;
      if (!stream) r = await oa.responses.create(req);
      else {
        const s = oa.responses.stream(req);
        r = await s.finalResponse();
      }
      assert.equal(r.object, 'response');
      assert.equal(r.status, 'completed');
      const out = { text: r.output_text ?? '', thinking: '', calls: [], finish: r.status };
      for (const it of r.output) {
        if (it.type === 'reasoning') out.thinking += (it.summary || []).map((s) => s.text).join('') + (it.content || []).map((s) => s.text).join('');
        if (it.type === 'function_call') out.calls.push({ id: it.call_id, name: it.name, args: parseArgs(it.arguments) });
      }
      return out;
    },
  },
  claude: {
    carriesImageUrl: true,
    async run(model, q, stream) {
      const user = [{ type: 'text', text: q.user }];
      if (q.image) user.push({ type: 'image', source: q.image === 'url' ? { type: 'url', url: IMG_URL } : { type: 'base64', media_type: 'image/png', data: PNG_B64 } });
      const messages = [{ role: 'user', content: user }];
      for (const h of q.history || []) {
        if (h.call) messages.push({ role: 'assistant', content: [{ type: 'tool_use', id: h.call.id, name: h.call.name, input: h.call.args }] });
        if (h.result) messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: h.result.id, content: h.result.content }] });
      }
      const req = { model, max_tokens: 4096, messages };
      if (q.system) req.system = q.system;
      if (q.tools) req.tools = q.tools.map((t) => ({ name: t.name, description: t.description, input_schema: t.schema }));
      if (q.thinking) req.thinking = { type: 'enabled', budget_tokens: 2048 };
      let m;
      if (!stream) m = await an.messages.create(req);
      else m = await an.messages.stream(req).finalMessage();
      assert.equal(m.type, 'message');
      assert.equal(m.role, 'assistant');
      const out = { text: '', thinking: '', calls: [], finish: m.stop_reason };
      for (const b of m.content) {
        if (b.type === 'text') out.text += b.text;
        if (b.type === 'thinking') out.thinking += b.thinking;
        if (b.type === 'tool_use') out.calls.push({ id: b.id, name: b.name, args: b.input });
      }
      return out;
    },
  },
  gemini: {
    carriesImageUrl: false, // fileData needs an uploaded file URI; no public URL images
    async run(model, q, stream) {
      const parts = [{ text: q.user }];
      if (q.image) parts.push({ inlineData: { mimeType: 'image/png', data: PNG_B64 } });
      const contents = [{ role: 'user', parts }];
      for (const h of q.history || []) {
        if (h.call) contents.push({ role: 'model', parts: [{ functionCall: { id: h.call.id, name: h.call.name, args: h.call.args } }] });
        if (h.result) contents.push({ role: 'user', parts: [{ functionResponse: { id: h.result.id, name: h.result.name, response: { output: h.result.content } } }] });
      }
      const config = { maxOutputTokens: 4096 };
      if (q.system) config.systemInstruction = q.system;
      if (q.tools) config.tools = [{ functionDeclarations: q.tools.map((t) => ({ name: t.name, description: t.description, parametersJsonSchema: t.schema })) }];
      if (q.thinking) config.thinkingConfig = { includeThoughts: true, thinkingBudget: 2048 };
      const out = { text: '', thinking: '', calls: [], finish: null };
      const take = (r) => {
        const c = r.candidates?.[0];
        if (!c) return;
        if (c.finishReason) out.finish = c.finishReason;
        for (const p of c.content?.parts || []) {
          if (p.thought && p.text) out.thinking += p.text;
          else if (p.text) out.text += p.text;
          if (p.functionCall) out.calls.push({ id: p.functionCall.id, name: p.functionCall.name, args: p.functionCall.args ?? {} });
        }
      };
      if (!stream) take(await gg.models.generateContent({ model, contents, config }));
      else for await (const ch of await gg.models.generateContentStream({ model, contents, config })) take(ch);
      return out;
    },
  },
};
const CLIENT_FORMATS = Object.keys(CLIENTS);

// ------------------------------------------------------------------ scenarios

const CALL_ID = 'call_wx_7Q2';
const SCENARIOS = {
  text: {
    q: { user: 'Say hello MARK-USER-1' },
    reply: { text: 'Hello there, from the mock upstream.', chunks: 4 },
    check(got, up) {
      assert.equal(got.text, 'Hello there, from the mock upstream.');
      assert.deepEqual(got.calls, []);
      assert.match(up.userText, /MARK-USER-1/);
    },
  },
  system: {
    q: { system: 'You are terse. MARK-SYS-42', user: 'Say hi' },
    reply: { text: 'Hi.' },
    check(got, up) {
      assert.equal(got.text, 'Hi.');
      assert.match(up.system, /MARK-SYS-42/, `upstream system prompt: ${JSON.stringify(up.system)}`);
      assert.doesNotMatch(up.userText, /MARK-SYS-42/, 'the system prompt is not folded into the user turn');
    },
  },
  tool_call: {
    q: { user: 'Weather in Paris?', tools: [WEATHER_TOOL] },
    reply: { tools: [{ id: 'call_up_9', name: 'get_weather', args: { city: 'Paris', days: 2 } }], argChunks: 4 },
    check(got, up, ctx) {
      assert.equal(got.calls.length, 1, `one tool call, got ${JSON.stringify(got)}`);
      assert.equal(got.calls[0].name, 'get_weather');
      assert.deepEqual(got.calls[0].args, { city: 'Paris', days: 2 });
      if (ctx.client !== 'gemini') assert.ok(got.calls[0].id, 'the call has an id');
      assert.deepEqual(up.tools, ['get_weather'], 'the tool declaration reached the upstream');
      assert.ok(['tool_calls', 'tool_use', 'completed', 'STOP'].includes(got.finish), `finish reason ${got.finish}`);
    },
  },
  tool_result: {
    q: {
      user: 'Weather in Paris?', tools: [WEATHER_TOOL],
      history: [{ call: { id: CALL_ID, name: 'get_weather', args: { city: 'Paris' } } }, { result: { id: CALL_ID, name: 'get_weather', content: '22 C and sunny MARK-RES-7' } }],
    },
    reply: { text: 'It is 22 C and sunny in Paris.' },
    check(got, up, ctx) {
      assert.equal(got.text, 'It is 22 C and sunny in Paris.');
      assert.equal(up.calls.length, 1, `upstream history has the call: ${JSON.stringify(up.calls)}`);
      assert.equal(up.calls[0].name, 'get_weather');
      assert.deepEqual(up.calls[0].args, { city: 'Paris' });
      assert.equal(up.results.length, 1, `upstream has the tool result: ${JSON.stringify(up.results)}`);
      assert.match(up.results[0].content, /22 C and sunny MARK-RES-7/);
      if (ctx.upstream !== 'gemini' || up.calls[0].id || up.results[0].id)
        assert.equal(up.results[0].id, up.calls[0].id, 'the tool result carries the id of its call');
      if (ctx.upstream !== 'gemini') assert.ok(up.results[0].id, 'the upstream tool result has a call id');
      if (ctx.upstream === 'gemini') assert.equal(up.results[0].name, 'get_weather', 'Gemini functionResponse carries the function name');
      if (ctx.client !== 'gemini' && ctx.upstream !== 'gemini') assert.equal(up.results[0].id, CALL_ID, 'the client call id is kept');
    },
  },
  thinking: {
    q: { user: 'Think, then answer.', thinking: true },
    reply: { thinking: 'Pondering the question step by step.', text: 'The answer is 42.' },
    check(got, up) {
      assert.equal(got.text, 'The answer is 42.');
      assert.equal(got.thinking, 'Pondering the question step by step.', 'thinking text reaches the client');
      assert.ok(up.thinking, `the upstream request asks for reasoning (got ${JSON.stringify(up.thinking)})`);
    },
  },
  image: {
    q: { user: 'Describe this image.', image: 'b64' },
    reply: { text: 'A single pixel.' },
    check(got, up) {
      assert.equal(got.text, 'A single pixel.');
      assert.equal(up.images.length, 1, `one image upstream: ${JSON.stringify(up.images)}`);
      assert.equal(up.images[0].data, PNG_B64, 'image bytes unchanged');
      assert.equal(up.images[0].mime, 'image/png');
    },
  },
  image_url: {
    clients: ['chat', 'responses', 'claude'],
    q: { user: 'Describe this image.', image: 'url' },
    reply: { text: 'A cat.' },
    check(got, up) {
      assert.equal(got.text, 'A cat.');
      assert.ok(JSON.stringify(up.raw).includes(IMG_URL), 'the image URL reaches the upstream');
    },
  },
};

// -------------------------------------------------------------------- set-up

// Models of their own for the client-disconnect tests, so that a cooldown there
// cannot touch the other groups.
const DC = { openai: { name: 'mock-dc-openai', alias: 'mx-dc-openai' }, claude: { name: 'mock-dc-claude', alias: 'mx-dc-claude' } };

before(async () => {
  mock = await startMock();
  const U = UPSTREAMS;
  const entry = (u, base) => ({ 'api-key': u.key, 'base-url': base, models: [{ name: u.name, alias: u.alias }] });
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    openaiCompat: [{ name: 'mx-compat', baseUrl: `${mock.url}/v1`, keys: [U.openai.key], models: [{ name: U.openai.name, alias: U.openai.alias }, DC.openai] }],
    extra: {
      'codex-api-key': [entry(U.responses, `${mock.url}/v1`)],
      'claude-api-key': [{ ...entry(U.claude, mock.url), models: [{ name: U.claude.name, alias: U.claude.alias }, DC.claude] }],
      'gemini-api-key': [entry(U.gemini, mock.url)],
    },
  });
  oa = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 10000 });
  an = new Anthropic({ baseURL: proxy.url, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 10000 });
  gg = new GoogleGenAI({ apiKey: CLIENT_KEY, httpOptions: { baseUrl: proxy.url, timeout: 10000, retryOptions: { attempts: 1 } } });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

function upstreamPath(upstream, stream) {
  const u = UPSTREAMS[upstream];
  switch (upstream) {
    case 'openai': return ['/v1/chat/completions', stream];
    case 'responses': return ['/v1/responses', true]; // Codex always streams upstream
    case 'claude': return ['/v1/messages', stream];
    case 'gemini': return [`/v1beta/models/${u.name}:${stream ? 'streamGenerateContent' : 'generateContent'}`, stream];
  }
}

// ---------------------------------------------------------------- the matrix

describe('matrix', () => {
  for (const client of CLIENT_FORMATS) {
    for (const upstream of UP_FORMATS) {
      for (const stream of [false, true]) {
        for (const [name, sc] of Object.entries(SCENARIOS)) {
          if (sc.clients && !sc.clients.includes(client)) continue;
          test(`${client}→${upstream} ${stream ? 'stream' : 'json'} ${name}`, T(), async () => {
            mock.reset().reply(sc.reply);
            const got = await CLIENTS[client].run(UPSTREAMS[upstream].alias, sc.q, stream);
            assert.equal(mock.requests.length, 1, `exactly one upstream request (got ${mock.requests.map((r) => r.path).join(', ')})`);
            const rec = mock.last();
            const [path, upStream] = upstreamPath(upstream, stream);
            assert.equal(rec.path, path);
            assert.equal(rec.stream, upStream, 'upstream stream flag');
            if (upstream === 'gemini' && stream) assert.equal(rec.query.alt, 'sse');
            const up = READ_UPSTREAM[upstream](rec);
            up.raw = rec.body;
            assert.equal(up.model, UPSTREAMS[upstream].name, 'alias rewritten to the upstream model name');
            const auth = rec.headers.authorization || rec.headers['x-api-key'] || rec.headers['x-goog-api-key'] || '';
            assert.match(auth, new RegExp(UPSTREAMS[upstream].key), 'upstream key sent');
            assert.ok(!JSON.stringify(rec.headers).includes(CLIENT_KEY), 'the client key is not forwarded');
            sc.check(got, up, { client, upstream, stream });
          });
        }
      }
    }
  }
});

// ------------------------------------------------- failure after the first byte

// Each client must see its own format's error event and its SDK must raise
// (or, for Responses, report response.failed / error).
async function streamUntilError(client, model) {
  const q = { user: 'Tell me a long story.' };
  let text = '';
  try {
    switch (client) {
      case 'chat': {
        const s = await oa.chat.completions.create({ model, messages: [{ role: 'user', content: q.user }], stream: true });
        for await (const c of s) text += c.choices[0]?.delta?.content ?? '';
        break;
      }
      case 'responses': {
        const s = await oa.responses.create({ model, input: q.user, stream: true });
        const types = [];
        for await (const ev of s) {
          types.push(ev.type);
          if (ev.type === 'response.output_text.delta') text += ev.delta;
          if (ev.type === 'response.failed' || ev.type === 'error') return { error: ev, text, types };
        }
        return { error: null, text, types };
      }
      case 'claude': {
        const s = await an.messages.create({ model, max_tokens: 512, messages: [{ role: 'user', content: q.user }], stream: true });
        for await (const ev of s) if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
        break;
      }
      case 'gemini': {
        for await (const ch of await gg.models.generateContentStream({ model, contents: q.user })) text += ch.text ?? '';
        break;
      }
    }
  } catch (e) {
    return { error: e, text };
  }
  return { error: null, text };
}

describe('upstream failure after the first byte', () => {
  const TEXT = 'one two three four five six seven eight nine ten';
  for (const client of CLIENT_FORMATS) {
    for (const upstream of UP_FORMATS) {
      for (const kind of ['cut', 'in-band error']) {
        const todo = undefined;
        test(`${client}←${upstream} ${kind}: the client's error event ends the stream`, { ...T(), todo }, async () => {
          // frames: a few text deltas get through before the failure
          const spec = kind === 'cut' ? { text: TEXT, chunks: 10, cutAfter: 6, eventDelayMs: 5 } : { text: TEXT, chunks: 10, errorAfter: 6, eventDelayMs: 5, streamError: { status: 500, message: 'upstream exploded MARK-ERR' } };
          mock.reset().reply(spec);
          const r = await streamUntilError(client, UPSTREAMS[upstream].alias);
          assert.ok(r.error, `the client saw an error (text so far ${JSON.stringify(r.text)}, events ${JSON.stringify(r.types)})`);
          assert.ok(r.text.length > 0 && TEXT.startsWith(r.text), `partial text came first: ${JSON.stringify(r.text)}`);
          assert.ok(r.text.length < TEXT.length, 'not the whole text');
          if (client === 'responses') {
            assert.ok(['response.failed', 'error'].includes(r.error.type));
          } else if (client === 'chat') {
            assert.ok(r.error instanceof OpenAI.APIError, `OpenAI APIError from a data: {"error":…} frame, got ${r.error}`);
          } else if (client === 'claude') {
            assert.ok(r.error instanceof Anthropic.APIError, `Anthropic APIError from event: error, got ${r.error}`);
          } else {
            assert.match(String(r.error?.message ?? r.error), /error/i);
            assert.equal(r.error?.name, 'ApiError', `genai ApiError from an error chunk, got ${r.error?.name}: ${r.error?.message}`);
          }
        });
      }
    }
  }
});

// ---------------------------------------------------------- cliproxy's own errors

async function raw(method, path, body, headers = {}) {
  const r = await fetch(`${proxy.url}${path}`, {
    method, headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(8000),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, text, json, headers: r.headers };
}

const ENVELOPE = {
  chat(j) { assert.equal(typeof j?.error?.message, 'string'); assert.equal(typeof j.error.type, 'string'); assert.ok('code' in j.error); },
  responses(j) { ENVELOPE.chat(j); },
  claude(j) { assert.equal(j?.type, 'error'); assert.equal(typeof j.error?.type, 'string'); assert.equal(typeof j.error.message, 'string'); },
  gemini(j) { assert.equal(typeof j?.error?.code, 'number'); assert.equal(typeof j.error.message, 'string'); assert.match(j.error.status, /^[A-Z_]+$/); },
};
const AUTH = {
  chat: { authorization: `Bearer ${CLIENT_KEY}` }, responses: { authorization: `Bearer ${CLIENT_KEY}` },
  claude: { 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01' }, gemini: { 'x-goog-api-key': CLIENT_KEY },
};
const ERR_REQ = {
  chat: (m, stream) => ['/v1/chat/completions', { model: m, messages: [{ role: 'user', content: 'hi' }], stream }],
  responses: (m, stream) => ['/v1/responses', { model: m, input: 'hi', stream }],
  claude: (m, stream) => ['/v1/messages', { model: m, max_tokens: 16, messages: [{ role: 'user', content: 'hi' }], stream }],
  gemini: (m, stream) => [`/v1beta/models/${m}:${stream ? 'streamGenerateContent?alt=sse' : 'generateContent'}`, { contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }],
};

describe("errors raised by cliproxy, in each client's envelope", () => {
  for (const client of CLIENT_FORMATS) {
    test(`${client}: bad JSON → 400`, T(), async () => {
      mock.reset();
      const [path] = ERR_REQ[client]('mx-openai', false);
      const r = await raw('POST', path, '{"model": "mx-openai", "messages": [', AUTH[client]);
      assert.equal(r.status, 400, r.text);
      ENVELOPE[client](r.json);
      if (client === 'gemini') assert.equal(r.json.error.status, 'INVALID_ARGUMENT');
      if (client === 'claude') assert.equal(r.json.error.type, 'invalid_request_error');
      if (client === 'chat' || client === 'responses') assert.equal(r.json.error.type, 'invalid_request_error');
      assert.equal(mock.requests.length, 0, 'nothing sent upstream');
    });
    for (const stream of [false, true]) {
      test(`${client}: unknown model ${stream ? 'stream' : 'json'} → 502 before any stream byte`, T(), async () => {
        mock.reset();
        const [path, body] = ERR_REQ[client]('no-such-model-mx', stream);
        const r = await raw('POST', path, JSON.stringify(body), AUTH[client]);
        assert.equal(r.status, 502, r.text);
        assert.match(r.headers.get('content-type') || '', /json/);
        ENVELOPE[client](r.json);
        assert.match(r.text, /no-such-model-mx/);
        assert.equal(mock.requests.length, 0);
      });
    }
    test(`${client}: wrong client key → 401`, T(), async () => {
      const [path, body] = ERR_REQ[client]('mx-openai', false);
      const bad = Object.fromEntries(Object.entries(AUTH[client]).map(([k, v]) => [k, v.replace(CLIENT_KEY, 'sk-wrong')]));
      const r = await raw('POST', path, JSON.stringify(body), bad);
      assert.equal(r.status, 401, r.text);
      ENVELOPE[client](r.json);
    });
  }

  test('the SDKs raise typed errors with the status', T(), async () => {
    await assert.rejects(oa.responses.create({ model: 'no-such-model-mx', input: 'hi' }), (e) => e instanceof OpenAI.APIError && e.status === 502);
    await assert.rejects(an.messages.create({ model: 'no-such-model-mx', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }),
      (e) => e instanceof Anthropic.APIError && e.status === 502 && e.error?.type === 'error');
    await assert.rejects(gg.models.generateContent({ model: 'no-such-model-mx', contents: 'hi' }), (e) => e.name === 'ApiError' && e.status === 502);
  });

  test('upstream error status and envelope are translated to the client format', T(), async () => {
    for (const client of CLIENT_FORMATS) {
      for (const upstream of UP_FORMATS) {
        mock.reset().reply({ error: { status: 400, message: `bad thing MARK-${client}-${upstream}` } });
        const [path, body] = ERR_REQ[client](UPSTREAMS[upstream].alias, false);
        const r = await raw('POST', path, JSON.stringify(body), AUTH[client]);
        assert.equal(r.status, 400, `${client}←${upstream}: ${r.text}`);
        ENVELOPE[client](r.json);
        assert.match(r.text, new RegExp(`MARK-${client}-${upstream}`), `${client}←${upstream}: the upstream message survives`);
      }
    }
  });
});

// ------------------------------------------------------------- count endpoints

describe('count endpoints', () => {
  for (const upstream of UP_FORMATS) {
    test(`anthropic countTokens via ${upstream} model → {"input_tokens":N}`, T(), async () => {
      mock.reset();
      const r = await an.messages.countTokens({ model: UPSTREAMS[upstream].alias, system: 'Be brief.', messages: [{ role: 'user', content: 'How many tokens is this sentence, roughly?' }] });
      assert.equal(typeof r.input_tokens, 'number');
      assert.ok(r.input_tokens > 0 && r.input_tokens < 200, `input_tokens ${r.input_tokens}`);
      const j = await raw('POST', '/v1/messages/count_tokens', JSON.stringify({ model: UPSTREAMS[upstream].alias, messages: [{ role: 'user', content: 'hi' }] }), AUTH.claude);
      assert.equal(j.status, 200, j.text);
      assert.deepEqual(Object.keys(j.json), ['input_tokens']);
    });
    test(`genai countTokens via ${upstream} model → {"totalTokens":N,...}`, T(), async () => {
      mock.reset();
      const r = await gg.models.countTokens({ model: UPSTREAMS[upstream].alias, contents: 'How many tokens is this sentence, roughly?' });
      assert.equal(typeof r.totalTokens, 'number');
      assert.ok(r.totalTokens > 0 && r.totalTokens < 200, `totalTokens ${r.totalTokens}`);
      const j = await raw('POST', `/v1beta/models/${UPSTREAMS[upstream].alias}:countTokens`, JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }), AUTH.gemini);
      assert.equal(j.status, 200, j.text);
      assert.equal(typeof j.json.totalTokens, 'number');
    });
  }
});

// ------------------------------------------------- WebSocket probe and models

describe('misc endpoints', () => {
  // Issue 3: ":streamGenerateContent (alt=sse -> SSE; otherwise a streamed JSON array)".
  test('Gemini :streamGenerateContent without alt → a streamed JSON array', T(), async () => {
    for (const upstream of ['gemini', 'openai']) {
      mock.reset().reply({ text: 'array of chunks here', chunks: 3 });
      const r = await raw('POST', `/v1beta/models/${UPSTREAMS[upstream].alias}:streamGenerateContent`, JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }), AUTH.gemini);
      assert.equal(r.status, 200, r.text);
      assert.match(r.headers.get('content-type') || '', /application\/json/, `${upstream}: content-type`);
      assert.ok(Array.isArray(r.json), `${upstream}: body is a JSON array: ${r.text.slice(0, 120)}`);
      assert.equal(r.json.map((c) => c.candidates?.[0]?.content?.parts?.map((p) => p.text).join('') ?? '').join(''), 'array of chunks here');
    }
  });

  test('GET /v1/responses with Upgrade: websocket → 426 (Codex falls back to POST at once)', T(), async () => {
    const res = await new Promise((resolve, reject) => {
      const req = http.request(`${proxy.url}/v1/responses`, {
        method: 'GET',
        headers: {
          authorization: `Bearer ${CLIENT_KEY}`, connection: 'Upgrade', upgrade: 'websocket',
          'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
          'openai-beta': 'responses_websockets=2026-02-06',
        },
        timeout: 5000,
      });
      req.on('response', (r) => { let b = ''; r.on('data', (d) => { b += d; }); r.on('end', () => resolve({ status: r.statusCode, body: b })); });
      req.on('upgrade', (r, sock) => { sock.destroy(); resolve({ status: r.statusCode, body: '' }); });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      req.end();
    });
    assert.equal(res.status, 426, res.body);
  });

  test('GET /v1/models: Anthropic shape for anthropic-version, OpenAI shape otherwise; /v1beta/models lists Gemini-style', T(), async () => {
    const a = await raw('GET', '/v1/models', undefined, AUTH.claude);
    assert.equal(a.status, 200, a.text);
    assert.equal(a.json.has_more, false);
    assert.ok(a.json.data.some((m) => m.id === 'mx-claude' && m.type === 'model'));
    const o = await oa.models.list();
    assert.ok(o.data.some((m) => m.id === 'mx-gemini' && m.object === 'model'));
    const pager = await gg.models.list();
    const names = [];
    for await (const m of pager) names.push(m.name);
    assert.ok(names.includes('models/mx-openai'), `genai models.list: ${names.join(', ')}`);
    const one = await gg.models.get({ model: 'mx-responses' });
    assert.equal(one.name, 'models/mx-responses');
  });
});

// ------------------------------------------------------- client goes away

// A client that disconnects while its request is upstream says nothing about the
// upstream credential. Found by the benchmarks: wrk closes its connections with
// requests in flight, cliproxy then cooled the only credential for 60 s and
// answered every later request with 429 model_cooldown.
describe('client disconnect', () => {
  for (const upstream of ['openai', 'claude']) {
    const todo = undefined;
    test(`a client that aborts mid-request does not cool down the ${upstream} upstream`, { ...T(), todo }, async () => {
      mock.reset().once({ text: 'slow', delayMs: 400 }).reply({ text: 'still served' });
      const ac = new AbortController();
      const p = fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST', signal: ac.signal,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
        body: JSON.stringify({ model: DC[upstream].alias, messages: [{ role: 'user', content: 'hi' }] }),
      });
      await mock.waitForRequest(() => true, 3000);
      ac.abort();
      await assert.rejects(p);
      await mock.waitForClose(mock.requests[0], 3000); // cliproxy cancelled the upstream request
      const r = await raw('POST', '/v1/chat/completions', JSON.stringify({ model: DC[upstream].alias, messages: [{ role: 'user', content: 'again' }] }), AUTH.chat);
      assert.equal(r.status, 200, `the next request is served, got ${r.status} ${r.text}`);
      assert.equal(r.json.choices[0].message.content, 'still served');
    });
  }
});

// ---------------------------------------------------------- legacy completions

describe('legacy /v1/completions', () => {
  for (const upstream of ['openai', 'claude']) {
    test(`non-stream via ${upstream}`, T(), async () => {
      mock.reset().reply({ text: 'completed text MARK-LEG' });
      const r = await oa.completions.create({ model: UPSTREAMS[upstream].alias, prompt: 'Once upon a time', max_tokens: 20 });
      assert.equal(r.object, 'text_completion');
      assert.equal(r.choices[0].text, 'completed text MARK-LEG');
      assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
      assert.match(JSON.stringify(mock.last().body), /Once upon a time/);
    });
    test(`stream via ${upstream}`, T(), async () => {
      mock.reset().reply({ text: 'streamed completion in pieces', chunks: 4 });
      const s = await oa.completions.create({ model: UPSTREAMS[upstream].alias, prompt: 'Once upon a time', max_tokens: 20, stream: true });
      let text = '';
      let objs = new Set();
      for await (const c of s) { objs.add(c.object); text += c.choices[0]?.text ?? ''; }
      assert.equal(text, 'streamed completion in pieces');
      assert.deepEqual([...objs], ['text_completion']);
    });
  }
});
