// Issue 10, the upstream side of subscription accounts: Claude Code (claude
// credential files) and ChatGPT/Codex (codex credential files) logins served
// to every client format (Anthropic SDK, OpenAI SDK chat and responses, the
// Gemini SDK), against one mock that records what the upstream received.
//
//   Claude: Bearer token, Claude Code's fingerprint headers and beta list,
//   cloaking for non-Claude-Code clients (system relocation, tool names
//   mapped and reversed in streams and non-stream answers, metadata.user_id),
//   off for Claude Code itself and for a file with cloak_mode never, the
//   4-breakpoint limit, thinking rules.
//   Codex: the ChatGPT backend path, Originator, Chatgpt-Account-Id,
//   Session_id = prompt_cache_key, the body fix-ups, non-stream clients
//   answered from the upstream stream (also when response.completed has no
//   output), a model-capacity answer as 429, and a 429 with resets_in_seconds
//   cooling that account.
//
//   node --test subscriptions.test.mjs

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, toYaml } from './lib/proxy.mjs';

const CLIENT_KEY = 'sk-client-subs-7d21';
const CLAUDE_MODEL = 'claude-sonnet-4-5-20250929';
const CODEX_MODEL = 'gpt-5';
const T = { timeout: 20000 };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const CLAUDE_CODE_UA = 'claude-cli/2.1.197 (external, sdk-cli)';

let mock, proxy, dir, oa, an, gg;

function writeCred(name, doc) {
  fs.writeFileSync(path.join(dir, 'auths', name), JSON.stringify(doc), { mode: 0o600 });
}

before(async () => {
  mock = await startMock();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-subs-'));
  fs.mkdirSync(path.join(dir, 'auths'), { mode: 0o700 });
  const far = new Date(Date.now() + 30 * 86400e3).toISOString();
  writeCred('claude-a@example.com.json', {
    type: 'claude', email: 'a@example.com', access_token: 'at-claude-a', refresh_token: 'rt-a', expired: far,
  });
  writeCred('claude-b@example.com.json', {
    type: 'claude', email: 'b@example.com', access_token: 'at-claude-b', refresh_token: 'rt-b', expired: far,
    prefix: 'plain', cloak_mode: 'never',
  });
  writeCred('codex-c@example.com-plus.json', {
    type: 'codex', email: 'c@example.com', access_token: 'at-codex-c', refresh_token: 'rt-c', account_id: 'acc-123',
    expired: far,
  });
  const cfg = {
    host: '127.0.0.1',
    'auth-dir': path.join(dir, 'auths'),
    'api-keys': [CLIENT_KEY],
    'request-retry': 0,
    'max-retry-interval': 0,
    'force-model-prefix': true,
    'oauth-endpoints': { claude: { 'api-base-url': mock.url }, codex: { 'api-base-url': `${mock.url}/backend-api/codex` } },
    'claude-header-defaults': { 'package-version': '0.99.1', os: 'Linux' },
  };
  proxy = await startProxy({ configText: `port: \${PORT}\n${toYaml(cfg)}\n` });
  oa = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 10000 });
  an = new Anthropic({ baseURL: proxy.url, apiKey: CLIENT_KEY, maxRetries: 0, timeout: 10000 });
  gg = new GoogleGenAI({ apiKey: CLIENT_KEY, httpOptions: { baseUrl: proxy.url, timeout: 10000, retryOptions: { attempts: 1 } } });
});

after(async () => {
  await proxy?.stop();
  await mock?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const last = () => mock.requests[mock.requests.length - 1];

// ---------------------------------------------------------------- clients

const SYSTEM = 'Answer in one word.';
const schema = { type: 'object', properties: { command: { type: 'string' } }, required: ['command'] };

// Each client sends the same request (system text, one user turn, tools
// `bash` and `my_tool`) and returns the tool names and text it parsed.
const CLIENTS = {
  anthropic: async (model, stream) => {
    const req = { model, max_tokens: 100, system: SYSTEM, messages: [{ role: 'user', content: 'list the files' }],
                  tools: [{ name: 'bash', input_schema: schema }, { name: 'my_tool', input_schema: schema }] };
    if (!stream) {
      const m = await an.messages.create(req);
      return { tools: m.content.filter((b) => b.type === 'tool_use').map((b) => b.name),
               text: m.content.filter((b) => b.type === 'text').map((b) => b.text).join('') };
    }
    const tools = []; let text = '';
    for await (const ev of await an.messages.create({ ...req, stream: true })) {
      if (ev.type === 'content_block_start' && ev.content_block.type === 'tool_use') tools.push(ev.content_block.name);
      if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
    }
    return { tools, text };
  },
  chat: async (model, stream) => {
    const req = { model, messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: 'list the files' }],
                  tools: [{ type: 'function', function: { name: 'bash', parameters: schema } },
                          { type: 'function', function: { name: 'my_tool', parameters: schema } }] };
    if (!stream) {
      const c = await oa.chat.completions.create(req);
      const msg = c.choices[0].message;
      return { tools: (msg.tool_calls || []).map((t) => t.function.name), text: msg.content || '' };
    }
    const tools = []; let text = '';
    for await (const ch of await oa.chat.completions.create({ ...req, stream: true })) {
      const d = ch.choices[0]?.delta || {};
      for (const t of d.tool_calls || []) if (t.function?.name) tools.push(t.function.name);
      if (d.content) text += d.content;
    }
    return { tools, text };
  },
  responses: async (model, stream) => {
    const req = { model, instructions: SYSTEM, input: 'list the files',
                  tools: [{ type: 'function', name: 'bash', parameters: schema }, { type: 'function', name: 'my_tool', parameters: schema }] };
    if (!stream) {
      const r = await oa.responses.create(req);
      return { tools: r.output.filter((o) => o.type === 'function_call').map((o) => o.name), text: r.output_text || '' };
    }
    const tools = []; let text = '';
    for await (const ev of await oa.responses.create({ ...req, stream: true })) {
      if (ev.type === 'response.output_item.added' && ev.item.type === 'function_call') tools.push(ev.item.name);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
    }
    return { tools, text };
  },
  gemini: async (model, stream) => {
    const req = { model, contents: [{ role: 'user', parts: [{ text: 'list the files' }] }],
                  config: { systemInstruction: SYSTEM,
                            tools: [{ functionDeclarations: [{ name: 'bash', parameters: schema }, { name: 'my_tool', parameters: schema }] }] } };
    const collect = (r, acc) => {
      for (const p of r.candidates?.[0]?.content?.parts || []) {
        if (p.functionCall) acc.tools.push(p.functionCall.name);
        if (p.text) acc.text += p.text;
      }
      return acc;
    };
    if (!stream) return collect(await gg.models.generateContent(req), { tools: [], text: '' });
    const acc = { tools: [], text: '' };
    for await (const ch of await gg.models.generateContentStream(req)) collect(ch, acc);
    return acc;
  },
};

const textOf = (c) => (typeof c === 'string' ? c : (c || []).map((p) => p.text || '').join(''));

// ---------------------------------------------------------------- Claude

describe('Claude Code login', () => {
  const sessions = new Set();
  for (const [client, send] of Object.entries(CLIENTS)) {
    for (const stream of [false, true]) {
      test(`${client} ${stream ? 'stream' : 'non-stream'}: cloaked, fingerprinted, tool names reversed`, T, async () => {
        mock.reply({ tools: [{ name: 'Bash', args: { command: 'ls' } }, { name: 'my_tool', args: { command: 'x' } }] });
        const got = await send(CLAUDE_MODEL, stream);
        assert.deepEqual(got.tools, ['bash', 'my_tool']);
        const r = last();
        assert.equal(r.format, 'claude');
        assert.equal(r.headers.authorization, 'Bearer at-claude-a');
        assert.equal(r.headers['x-api-key'], undefined);
        const betas = r.headers['anthropic-beta'].split(',');
        assert.ok(betas.includes('oauth-2025-04-20') && betas.includes('interleaved-thinking-2025-05-14'), betas.join());
        assert.equal(r.headers['x-app'], 'cli');
        assert.match(r.headers['user-agent'], /^claude-cli\//);
        assert.equal(r.headers['x-stainless-package-version'], '0.99.1'); // claude-header-defaults
        assert.equal(r.headers['x-stainless-os'], 'Linux');
        assert.equal(r.headers['x-stainless-lang'], 'js');
        assert.match(r.headers['x-claude-code-session-id'], UUID);
        sessions.add(r.headers['x-claude-code-session-id']);
        // system relocated: Claude Code's blocks first, the user's text in a reminder
        assert.match(r.body.system[0].text, /^x-anthropic-billing-header: cc_version=/);
        assert.equal(r.body.system[1].text, "You are Claude Code, Anthropic's official CLI for Claude.");
        const first = r.body.messages[0];
        assert.equal(first.role, 'user');
        assert.equal(first.content[0].text, `<system-reminder>\n${SYSTEM}\n</system-reminder>\n\n`);
        assert.ok(!JSON.stringify(r.body.system).includes(SYSTEM));
        // tools renamed upstream, the unknown one kept
        assert.deepEqual(r.body.tools.map((t) => t.name), ['Bash', 'my_tool']);
        const uid = JSON.parse(r.body.metadata.user_id);
        assert.match(uid.device_id, /^[0-9a-f]{64}$/);
        assert.equal(uid.session_id, r.headers['x-claude-code-session-id']);
      });
    }
  }

  test('the session id is the same for every request of one client on one account', () => {
    assert.equal(sessions.size, 1, [...sessions].join());
  });

  test('Claude Code itself is not cloaked (auto): its system, tools, headers and names pass', T, async () => {
    mock.reply({ tools: [{ name: 'Bash', args: { command: 'ls' } }] });
    const res = await fetch(`${proxy.url}/v1/messages?beta=true`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': CLIENT_KEY, 'user-agent': CLAUDE_CODE_UA,
                 'anthropic-version': '2023-06-01', 'anthropic-beta': 'claude-code-20250219,effort-2025-11-24',
                 'x-claude-code-session-id': '4b2efcd1-a46a-4f03-b17f-fc5dc350427e', 'x-stainless-os': 'Windows' },
      body: JSON.stringify({ model: CLAUDE_MODEL, max_tokens: 50, system: [{ type: 'text', text: 'cc system' }],
                             tools: [{ name: 'Bash', input_schema: schema }],
                             metadata: { user_id: '{"device_id":"d","account_uuid":"","session_id":"s"}' },
                             messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.content.find((b) => b.type === 'tool_use').name, 'Bash');
    const r = last();
    assert.equal(r.headers['user-agent'], CLAUDE_CODE_UA);
    assert.equal(r.headers['x-stainless-os'], 'Windows');
    assert.equal(r.headers['x-claude-code-session-id'], '4b2efcd1-a46a-4f03-b17f-fc5dc350427e');
    assert.equal(r.headers['anthropic-beta'], 'claude-code-20250219,effort-2025-11-24,oauth-2025-04-20,interleaved-thinking-2025-05-14');
    assert.deepEqual(r.body.system, [{ type: 'text', text: 'cc system' }]);
    assert.equal(r.body.metadata.user_id, '{"device_id":"d","account_uuid":"","session_id":"s"}');
    assert.equal(r.body.messages[0].content, 'hi');
  });

  test('a file with cloak_mode never is not cloaked, and its stream keeps the upstream names', T, async () => {
    mock.reply({ tools: [{ name: 'Bash', args: { command: 'ls' } }] });
    const got = await CLIENTS.anthropic(`plain/${CLAUDE_MODEL}`, true);
    assert.deepEqual(got.tools, ['Bash']);
    const r = last();
    assert.equal(r.headers.authorization, 'Bearer at-claude-b');
    assert.equal(r.body.system, SYSTEM);
    assert.deepEqual(r.body.tools.map((t) => t.name), ['bash', 'my_tool']);
    assert.equal(r.body.metadata, undefined);
    assert.ok(r.headers['anthropic-beta'].includes('oauth-2025-04-20')); // still a login
  });

  test('at most 4 cache_control breakpoints reach the upstream; the last one stays', T, async () => {
    mock.reply({ text: 'ok' });
    const cc = { type: 'ephemeral' };
    const blocks = (n) => Array.from({ length: n }, (_, i) => ({ type: 'text', text: `part ${i}`, cache_control: cc }));
    await an.messages.create({
      model: `plain/${CLAUDE_MODEL}`, max_tokens: 20,
      system: [{ type: 'text', text: 'sys', cache_control: cc }],
      tools: [{ name: 't', input_schema: schema, cache_control: cc }],
      messages: [{ role: 'user', content: blocks(2) }, { role: 'assistant', content: 'a' }, { role: 'user', content: blocks(3) }],
    });
    const r = last();
    const where = [];
    r.body.tools.forEach((t, i) => t.cache_control && where.push(`tools.${i}`));
    r.body.system.forEach((b, i) => b.cache_control && where.push(`system.${i}`));
    r.body.messages.forEach((m, i) => Array.isArray(m.content) && m.content.forEach((b, j) => b.cache_control && where.push(`messages.${i}.${j}`)));
    // 7 asked: the three oldest message breakpoints go, tools, system and the last two stay
    assert.deepEqual(where, ['tools.0', 'system.0', 'messages.2.1', 'messages.2.2']);
  });

  test('thinking forces temperature 1; a forced tool turns thinking off', T, async () => {
    mock.reply({ text: 'ok' });
    await an.messages.create({ model: `plain/${CLAUDE_MODEL}`, max_tokens: 2048, temperature: 0.3,
                               thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: 'x' }] });
    assert.equal(last().body.temperature, 1);
    assert.equal(last().body.thinking.type, 'enabled');
    mock.reply({ tools: [{ name: 't', args: { command: 'x' } }] });
    await an.messages.create({ model: `plain/${CLAUDE_MODEL}`, max_tokens: 2048, temperature: 0.3,
                               thinking: { type: 'enabled', budget_tokens: 1024 }, tools: [{ name: 't', input_schema: schema }],
                               tool_choice: { type: 'any' }, messages: [{ role: 'user', content: 'x' }] });
    assert.equal(last().body.thinking, undefined);
    assert.equal(last().body.temperature, 0.3);
  });
});

// ---------------------------------------------------------------- Codex

describe('ChatGPT (Codex) login', () => {
  for (const [client, send] of Object.entries(CLIENTS)) {
    for (const stream of [false, true]) {
      test(`${client} ${stream ? 'stream' : 'non-stream'}: ChatGPT backend headers and body fix-ups`, T, async () => {
        mock.reply({ text: 'Hello from codex' });
        const got = await send(CODEX_MODEL, stream);
        assert.equal(got.text, 'Hello from codex');
        const r = last();
        assert.equal(r.path, '/backend-api/codex/responses');
        assert.equal(r.headers.authorization, 'Bearer at-codex-c');
        assert.equal(r.headers.originator, 'codex-tui');
        assert.equal(r.headers['chatgpt-account-id'], 'acc-123');
        assert.equal(r.headers.accept, 'text/event-stream');
        assert.equal(r.body.stream, true); // always streamed upstream
        assert.equal(r.body.store, false);
        assert.ok(r.body.include.includes('reasoning.encrypted_content'));
        assert.equal(typeof r.body.instructions, 'string');
        assert.equal(r.body.reasoning.summary, 'auto');
        assert.equal(r.body.parallel_tool_calls, true);
        for (const k of ['max_output_tokens', 'temperature', 'top_p', 'previous_response_id', 'stream_options']) {
          assert.equal(r.body[k], undefined, k);
        }
        // Session_id is the prompt_cache_key, a UUIDv5 of the client key for keyed clients
        assert.equal(r.headers.session_id, r.body.prompt_cache_key);
        if (client !== 'anthropic') assert.match(r.body.prompt_cache_key, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-/);
      });
    }
  }

  test("a Responses client's prompt_cache_key, Originator and Codex headers pass", T, async () => {
    mock.reply({ text: 'ok' });
    await oa.responses.create({ model: CODEX_MODEL, input: 'x', prompt_cache_key: 'pck-42' },
                              { headers: { originator: 'codex_exec', version: '0.171.0', 'x-codex-turn-metadata': '{"turn_id":"t1"}',
                                           'x-client-request-id': 'rid-1' } });
    const r = last();
    assert.equal(r.body.prompt_cache_key, 'pck-42');
    assert.equal(r.headers.session_id, 'pck-42');
    assert.equal(r.headers.originator, 'codex_exec');
    assert.equal(r.headers.version, '0.171.0');
    assert.equal(r.headers['x-codex-turn-metadata'], '{"turn_id":"t1"}');
    assert.equal(r.headers['x-client-request-id'], 'rid-1');
  });

  test('a Claude client keys its cache on metadata.user_id', T, async () => {
    mock.reply({ text: 'ok' });
    const ask = (uid) => an.messages.create({ model: CODEX_MODEL, max_tokens: 10, metadata: { user_id: uid },
                                              messages: [{ role: 'user', content: 'x' }] });
    await ask('user-1');
    const a = last().body.prompt_cache_key;
    await ask('user-1');
    assert.equal(last().body.prompt_cache_key, a);
    await ask('user-2');
    assert.notEqual(last().body.prompt_cache_key, a);
    assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-5/);
  });

  test('a non-stream client gets the output items when response.completed has none', T, async () => {
    const ev = (type, o) => `event: ${type}\ndata: ${JSON.stringify({ type, ...o })}\n\n`;
    const item = { id: 'msg_1', type: 'message', role: 'assistant', status: 'completed',
                   content: [{ type: 'output_text', text: 'collected text', annotations: [] }] };
    const resp = (status, output) => ({ id: 'resp_1', object: 'response', created_at: 1, status, model: CODEX_MODEL, output,
                                        usage: { input_tokens: 3, output_tokens: 2, total_tokens: 5 } });
    mock.once({ raw: { status: 200, headers: { 'content-type': 'text/event-stream' },
                       body: ev('response.created', { response: resp('in_progress', []) })
                         + ev('response.output_item.done', { output_index: 0, item })
                         + ev('response.completed', { response: resp('completed', []) }) } });
    const c = await oa.chat.completions.create({ model: CODEX_MODEL, messages: [{ role: 'user', content: 'x' }] });
    assert.equal(c.choices[0].message.content, 'collected text');
  });

  test('a non-stream client gets an error, not a 200, when the stream fails at its first event', T, async () => {
    const ev = (type, o) => `event: ${type}\ndata: ${JSON.stringify({ type, ...o })}\n\n`;
    const resp = { id: 'resp_2', object: 'response', created_at: 1, status: 'failed', model: CODEX_MODEL, output: [],
                   error: { code: 'invalid_prompt', type: 'invalid_request_error', message: 'the prompt was refused' } };
    mock.once({ raw: { status: 200, headers: { 'content-type': 'text/event-stream' },
                       body: ev('response.created', { response: { ...resp, status: 'in_progress', error: null } })
                         + ev('response.failed', { response: resp }) } });
    await assert.rejects(oa.chat.completions.create({ model: CODEX_MODEL, messages: [{ role: 'user', content: 'x' }] }),
                         (e) => e.status === 400 && /the prompt was refused/.test(e.message));
  });

  test('a model-capacity answer is a 429 to the client', T, async () => {
    // another model than the next test's: this one now cools for a moment
    mock.once({ error: { status: 500, body: { error: { message: 'Selected model is at capacity. Please try a different model.' } } } });
    await assert.rejects(oa.chat.completions.create({ model: 'gpt-5-codex', messages: [{ role: 'user', content: 'x' }] }),
                         (e) => e.status === 429);
  });

  // Last in this file: the account stays cooling for an hour.
  test('a 429 with resets_in_seconds cools that account for that long', T, async () => {
    mock.reply({ text: 'ok' });
    mock.once({ error: { status: 429, body: { error: { type: 'usage_limit_reached', message: 'The usage limit has been reached',
                                                       plan_type: 'plus', resets_in_seconds: 3600 } } } });
    await assert.rejects(oa.chat.completions.create({ model: CODEX_MODEL, messages: [{ role: 'user', content: 'x' }] }),
                         (e) => e.status === 429);
    const seen = mock.requests.length;
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_KEY}` },
      body: JSON.stringify({ model: CODEX_MODEL, messages: [{ role: 'user', content: 'x' }] }),
    });
    assert.equal(res.status, 429);
    const body = await res.json();
    assert.equal(body.error.code, 'model_cooldown');
    assert.ok(body.error.reset_seconds > 3000 && body.error.reset_seconds <= 3600, String(body.error.reset_seconds));
    assert.equal(mock.requests.length, seen); // the cooling account was not asked
    // the Claude accounts are not affected
    mock.reply({ text: 'still here' });
    const got = await CLIENTS.chat(CLAUDE_MODEL, false);
    assert.equal(got.text, 'still here');
  });
});
