// Issue 3: real coding CLIs through cliproxy, each with a mock upstream of a
// different wire format behind it, each doing one tool round trip:
//
//   Claude Code 2.1.197  claude -p      Anthropic Messages  → cliproxy → Chat Completions mock
//   Codex CLI 0.171.0    codex exec     Responses (custom provider, wire_api="responses")
//                                                          → cliproxy → Anthropic Messages mock
//   Gemini CLI 0.61.0    gemini -p      Gemini (streamGenerateContent?alt=sse)
//                                                          → cliproxy → Responses (codex-api-key) mock
//   qwen-code 0.15.10    qwen -p        Chat Completions    → cliproxy → Anthropic Messages mock
//   opencode 1.18.33     opencode run   Chat Completions    → cliproxy → Chat Completions mock (text only)
//
// The mock answers the first turn with a tool call that reads hello.txt in the
// temporary working directory; the CLI runs it and sends the file's content back
// as a tool result; the mock answers that turn with text quoting what it got.
// Assertions: the CLI's final output, and what the mock received (the tool
// result with the file's content and the id of its call).
//
// The CLIs are pinned in spec/e2e/clis/package.json (installed by
// `scripts/setup.sh --test`); a missing one is skipped with that reason. Each CLI
// runs with a temporary HOME, telemetry and auto-update off, under `timeout`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, E2E_DIR } from './lib/proxy.mjs';

const CLIENT_KEY = 'sk-client-clis-91d0';
const BIN_DIR = path.join(E2E_DIR, 'clis', 'node_modules', '.bin');
const bin = (name) => path.join(BIN_DIR, name);
const missing = (name) => (fs.existsSync(bin(name)) ? false : `${bin(name)} is not installed (run scripts/setup.sh --test)`);
const CLI_TIMEOUT_S = 150;
const T = { timeout: (CLI_TIMEOUT_S + 30) * 1000 };

const SECRET = 'the-owl-flies-at-midnight-4471';
const FILE_TEXT = `hello from the cliproxy e2e file: ${SECRET}\n`;
const FINAL = (what) => `DONE: the file says ${SECRET} (via ${what})`;

let mock, proxy;

before(async () => {
  mock = await startMock();
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    openaiCompat: [{ name: 'cli-chat', baseUrl: `${mock.url}/v1`, keys: ['up-chat-key'], models: [{ name: 'mock-chat-up', alias: 'cc-model' }] }],
    extra: {
      'claude-api-key': [{ 'api-key': 'up-claude-key', 'base-url': mock.url, models: [{ name: 'mock-claude-up', alias: 'codex-model' }] }],
      'codex-api-key': [{ 'api-key': 'up-codex-key', 'base-url': `${mock.url}/v1`, models: [{ name: 'mock-responses-up', alias: 'gemini-3.1-pro-preview' }, { name: 'mock-responses-lite', alias: 'gemini-3.5-flash-lite' }] }],
    },
  });
});

// CPX_CLIS_DEBUG=1 prints what each CLI made cliproxy send upstream.
const debug = (tag) => {
  if (!process.env.CPX_CLIS_DEBUG) return;
  for (const q of mock.requests) console.error(`[${tag}] ${q.method} ${q.url} model=${q.body?.model ?? q.model} tools=${(q.body?.tools || []).length} status=${q.status}`);
};

after(async () => {
  await proxy?.stop();
  await mock?.close();
});

// A temp HOME and a working directory holding hello.txt.
function sandbox(tag) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `cpx-cli-${tag}-`));
  const home = path.join(root, 'home');
  const work = path.join(root, 'work');
  fs.mkdirSync(home);
  fs.mkdirSync(work);
  fs.writeFileSync(path.join(work, 'hello.txt'), FILE_TEXT);
  return { root, home, work, cleanup: () => fs.rmSync(root, { recursive: true, force: true }) };
}

// Runs a CLI under `timeout` with a minimal environment; resolves { code, stdout, stderr }.
function run(cmd, args, { env, cwd }) {
  const base = { PATH: process.env.PATH, LANG: 'C.UTF-8', TERM: 'dumb', NO_COLOR: '1', CI: '1' };
  return new Promise((resolve) => {
    const child = spawn('timeout', ['-k', '5', String(CLI_TIMEOUT_S), cmd, ...args], { cwd, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { if (stdout.length < 1 << 20) stdout += d; });
    child.stderr.on('data', (d) => { if (stderr.length < 1 << 20) stderr += d; });
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

const why = (r) => `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout.slice(-3000)}\n--- stderr\n${r.stderr.slice(-3000)}\n--- upstream requests\n${mock.requests.map((q) => `${q.method} ${q.url} ${q.status}`).join('\n')}\n--- cliproxy stderr\n${proxy.stderr().slice(-2000)}`;

// ----------------------------------------------------------------- Claude Code

test('Claude Code 2.1.197: claude -p → cliproxy (/v1/messages) → Chat Completions upstream, Read tool round trip', { ...T, skip: missing('claude') }, async () => {
  const sb = sandbox('claude');
  const file = path.join(sb.work, 'hello.txt');
  try {
    mock.reset().reply((req) => {
      const msgs = req.body?.messages || [];
      const result = msgs.find((m) => m.role === 'tool');
      if (!result) return { tools: [{ id: 'call_cc_read_1', name: 'Read', args: { file_path: file } }] };
      return { text: FINAL('claude code') };
    });
    const r = await run(bin('claude'), ['-p', 'Read hello.txt and tell me what it says', '--output-format', 'json', '--allowedTools', 'Read', '--max-turns', '4'], {
      cwd: sb.work,
      env: {
        HOME: sb.home,
        ANTHROPIC_BASE_URL: proxy.url, ANTHROPIC_API_KEY: CLIENT_KEY,
        ANTHROPIC_MODEL: 'cc-model', ANTHROPIC_SMALL_FAST_MODEL: 'cc-model',
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1', DISABLE_TELEMETRY: '1', DISABLE_AUTOUPDATER: '1',
        DISABLE_ERROR_REPORTING: '1', CLAUDE_CODE_DISABLE_TERMINAL_TITLE: '1',
      },
    });
    debug('claude');
    assert.equal(r.code, 0, why(r));
    const out = JSON.parse(r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).at(-1));
    assert.equal(out.is_error, false, why(r));
    assert.equal(out.result.trim(), FINAL('claude code'), why(r));

    const gens = mock.requests.filter((q) => q.path === '/v1/chat/completions');
    assert.ok(gens.length >= 2, `two model turns upstream, got ${gens.length}: ${why(r)}`);
    const first = gens[0].body;
    assert.equal(first.model, 'mock-chat-up');
    assert.ok(first.tools.some((t) => t.function?.name === 'Read'), 'Claude Code tools translated to Chat Completions functions');
    assert.ok(first.messages.some((m) => m.role === 'system' && /Claude/.test(typeof m.content === 'string' ? m.content : JSON.stringify(m.content))), 'Claude Code system blocks arrive as a system message');
    const last = gens.at(-1).body;
    const call = last.messages.flatMap((m) => m.tool_calls || []).find((c) => c.function.name === 'Read');
    assert.ok(call, 'the assistant tool call is in the history');
    assert.deepEqual(JSON.parse(call.function.arguments), { file_path: file });
    const res = last.messages.find((m) => m.role === 'tool');
    assert.equal(res.tool_call_id, call.id, 'tool result id matches the call');
    assert.match(JSON.stringify(res.content), new RegExp(SECRET), 'the file content came back as the tool result');
  } finally {
    sb.cleanup();
  }
});

// ------------------------------------------------------------------- Codex CLI

test('Codex CLI 0.171.0: codex exec (wire_api="responses") → cliproxy (/v1/responses) → Anthropic upstream, exec_command round trip', { ...T, skip: missing('codex') }, async () => {
  const sb = sandbox('codex');
  try {
    const codexHome = path.join(sb.home, '.codex');
    fs.mkdirSync(codexHome);
    fs.writeFileSync(path.join(codexHome, 'config.toml'), [
      'model = "codex-model"',
      'model_provider = "cpx"',
      'check_for_update_on_startup = false',
      'approval_policy = "never"',
      'sandbox_mode = "danger-full-access"',
      '',
      '[analytics]', 'enabled = false', '',
      '[model_providers.cpx]',
      'name = "cliproxy"',
      `base_url = "${proxy.url}/v1"`,
      'env_key = "CPX_KEY"',
      'wire_api = "responses"',
      'request_max_retries = 0',
      'stream_max_retries = 0',
      '',
    ].join('\n'));
    mock.reset().reply((req) => {
      const msgs = req.body?.messages || [];
      const hasResult = msgs.some((m) => Array.isArray(m.content) && m.content.some((b) => b.type === 'tool_result'));
      if (!hasResult) return { tools: [{ id: 'toolu_codex_1', name: 'exec_command', args: { cmd: 'cat hello.txt' } }] };
      return { text: FINAL('codex') };
    });
    const r = await run(bin('codex'), ['exec', '--skip-git-repo-check', '--color', 'never', 'Run cat hello.txt and tell me what it says'], {
      cwd: sb.work,
      env: { HOME: sb.home, CODEX_HOME: codexHome, CPX_KEY: CLIENT_KEY, RUST_LOG: 'error' },
    });
    debug('codex');
    assert.equal(r.code, 0, why(r));
    assert.match(r.stdout, new RegExp(FINAL('codex').replace(/[()]/g, '\\$&')), why(r));

    const gens = mock.requests.filter((q) => q.path === '/v1/messages');
    assert.ok(gens.length >= 2, `two model turns upstream, got ${gens.length}: ${why(r)}`);
    assert.equal(gens[0].body.model, 'mock-claude-up');
    assert.ok(gens[0].body.tools.some((t) => t.name === 'exec_command'), 'Codex function tools translated to Anthropic tools');
    const last = gens.at(-1).body;
    const use = last.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).find((b) => b.type === 'tool_use');
    assert.ok(use, 'the tool_use is in the history');
    assert.equal(use.name, 'exec_command');
    assert.deepEqual(use.input, { cmd: 'cat hello.txt' });
    const res = last.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).find((b) => b.type === 'tool_result');
    assert.equal(res.tool_use_id, use.id, 'tool_result id matches the tool_use');
    assert.match(JSON.stringify(res.content), new RegExp(SECRET), 'the command output came back as the tool result');
  } finally {
    sb.cleanup();
  }
});

// ------------------------------------------------------------------ Gemini CLI

test('Gemini CLI 0.61.0: gemini -p → cliproxy (/v1beta streamGenerateContent) → Responses upstream, read_file round trip', { ...T, skip: missing('gemini') }, async () => {
  const sb = sandbox('gemini');
  try {
    const gdir = path.join(sb.home, '.gemini');
    fs.mkdirSync(gdir);
    fs.writeFileSync(path.join(gdir, 'settings.json'), JSON.stringify({
      security: { auth: { selectedType: 'gemini-api-key' } },
      privacy: { usageStatisticsEnabled: false },
      telemetry: { enabled: false },
      general: { disableAutoUpdate: true, disableUpdateNag: true },
    }));
    mock.reset().reply((req) => {
      const input = req.body?.input || [];
      const hasResult = input.some((it) => it.type === 'function_call_output');
      // The routing classifier asks for JSON; answer it like a model would.
      if (req.body?.text?.format?.type === 'json_schema' || /classif|route/i.test(JSON.stringify(req.body?.instructions ?? '').slice(0, 4000)) && !req.body?.tools?.length)
        return { text: JSON.stringify({ reasoning: 'simple', model_choice: 'flash' }) };
      if (!hasResult) return { tools: [{ id: 'call_gem_read_1', name: 'read_file', args: { file_path: 'hello.txt' } }] };
      return { text: FINAL('gemini cli') };
    });
    const r = await run(bin('gemini'), ['-p', 'Read hello.txt and tell me what it says', '--output-format', 'json', '--skip-trust', '--yolo'], {
      cwd: sb.work,
      env: { HOME: sb.home, GEMINI_API_KEY: CLIENT_KEY, GOOGLE_GEMINI_BASE_URL: proxy.url, GEMINI_CLI_TRUST_WORKSPACE: 'true' },
    });
    debug('gemini');
    assert.equal(r.code, 0, why(r));
    const out = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
    assert.equal(out.response.trim(), FINAL('gemini cli'), why(r));

    const gens = mock.requests.filter((q) => q.path === '/v1/responses' && (q.body?.tools || []).some((t) => t.name === 'read_file'));
    assert.ok(gens.length >= 2, `two model turns with tools upstream, got ${gens.length}: ${why(r)}`);
    assert.equal(gens[0].body.model, 'mock-responses-up');
    const last = gens.at(-1).body;
    const call = last.input.find((it) => it.type === 'function_call');
    assert.ok(call, 'the function_call is in the history');
    assert.equal(call.name, 'read_file');
    assert.deepEqual(JSON.parse(call.arguments), { file_path: 'hello.txt' });
    const res = last.input.find((it) => it.type === 'function_call_output');
    assert.equal(res.call_id, call.call_id, 'function_call_output call_id matches the call');
    assert.match(JSON.stringify(res.output), new RegExp(SECRET), 'the file content came back as the tool result');
  } finally {
    sb.cleanup();
  }
});

// Codex's built-in provider pointed at cliproxy tries a WebSocket on GET /v1/responses
// first; cliproxy's 426 makes it fall back to POST at once (with 200/404 it retries
// for about 6 s).
test('Codex CLI 0.171.0 built-in provider (openai_base_url): WebSocket probe → 426 → immediate POST fallback', { ...T, skip: missing('codex') }, async () => {
  const sb = sandbox('codexws');
  try {
    const codexHome = path.join(sb.home, '.codex');
    fs.mkdirSync(codexHome);
    fs.writeFileSync(path.join(codexHome, 'config.toml'), [
      'model = "codex-model"',
      `openai_base_url = "${proxy.url}/v1"`,
      'check_for_update_on_startup = false',
      'approval_policy = "never"',
      'sandbox_mode = "danger-full-access"',
      '', '[analytics]', 'enabled = false', '',
    ].join('\n'));
    mock.reset().reply({ text: 'PONG from the anthropic mock' });
    const t0 = Date.now();
    const r = await run(bin('codex'), ['exec', '--skip-git-repo-check', '--color', 'never', 'Reply with the word PONG'], {
      cwd: sb.work,
      env: { HOME: sb.home, CODEX_HOME: codexHome, CODEX_API_KEY: CLIENT_KEY, RUST_LOG: 'error' },
    });
    const ms = Date.now() - t0;
    debug('codexws');
    assert.equal(r.code, 0, why(r));
    assert.match(r.stdout, /PONG from the anthropic mock/, why(r));
    assert.ok(ms < 5000, `codex finished in ${ms} ms; a retried WebSocket probe would take about 6 s more`);
    const gens = mock.requests.filter((q) => q.path === '/v1/messages');
    assert.equal(gens.length, 1, why(r));
  } finally {
    sb.cleanup();
  }
});

// ------------------------------------------------------------------- qwen-code

// qwen-code speaks Chat Completions; behind the alias is the Anthropic mock, so
// the tool round trip crosses Chat → Anthropic → Chat.
test('qwen-code 0.15.10: qwen -p → cliproxy (/v1/chat/completions) → Anthropic upstream, read_file round trip', { ...T, skip: missing('qwen') }, async () => {
  const sb = sandbox('qwen');
  const file = path.join(sb.work, 'hello.txt');
  try {
    const qdir = path.join(sb.home, '.qwen');
    fs.mkdirSync(qdir);
    fs.writeFileSync(path.join(qdir, 'settings.json'), JSON.stringify({
      security: { auth: { selectedType: 'openai' } },
      privacy: { usageStatisticsEnabled: false },
      telemetry: { enabled: false },
      general: { disableAutoUpdate: true, disableUpdateNag: true },
    }));
    mock.reset().reply((req) => {
      const msgs = req.body?.messages || [];
      const hasResult = msgs.some((m) => Array.isArray(m.content) && m.content.some((b) => b.type === 'tool_result'));
      const tools = (req.body?.tools || []).map((t) => t.name);
      if (!tools.length) return { text: 'ok' }; // side calls (titles, summaries)
      if (!hasResult) {
        const name = tools.find((n) => n === 'read_file') || tools.find((n) => /read/i.test(n));
        return { tools: [{ id: 'toolu_qwen_read_1', name, args: { absolute_path: file, file_path: file } }] };
      }
      return { text: FINAL('qwen code') };
    });
    const r = await run(bin('qwen'), ['-p', 'Read hello.txt and tell me what it says', '--yolo'], {
      cwd: sb.work,
      env: { HOME: sb.home, OPENAI_BASE_URL: `${proxy.url}/v1`, OPENAI_API_KEY: CLIENT_KEY, OPENAI_MODEL: 'codex-model' },
    });
    debug('qwen');
    assert.equal(r.code, 0, why(r));
    assert.match(r.stdout, new RegExp(FINAL('qwen code').replace(/[().]/g, '\\$&')), why(r));
    const gens = mock.requests.filter((q) => q.path.startsWith('/v1/messages') && (q.body?.tools || []).length);
    assert.ok(gens.length >= 2, `two model turns with tools upstream, got ${gens.length}: ${why(r)}`);
    assert.equal(gens[0].body.model, 'mock-claude-up');
    const last = gens.at(-1).body;
    const use = last.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).find((b) => b.type === 'tool_use');
    const res = last.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).find((b) => b.type === 'tool_result');
    assert.ok(use && res, 'tool_use and tool_result are in the history');
    assert.equal(res.tool_use_id, use.id, 'the tool result answers the call');
    assert.match(JSON.stringify(res.content), new RegExp(SECRET), 'the file content came back as the tool result');
  } finally {
    sb.cleanup();
  }
});

// -------------------------------------------------------------------- opencode

test('opencode 1.18.33: opencode run → cliproxy (/v1/chat/completions) → Chat Completions upstream', { ...T, skip: missing('opencode') }, async () => {
  const sb = sandbox('opencode');
  try {
    const cdir = path.join(sb.home, '.config', 'opencode');
    fs.mkdirSync(cdir, { recursive: true });
    fs.writeFileSync(path.join(cdir, 'opencode.json'), JSON.stringify({
      autoupdate: false, share: 'disabled', model: 'cliproxy/cc-model',
      provider: { cliproxy: { npm: '@ai-sdk/openai-compatible', options: { baseURL: `${proxy.url}/v1`, apiKey: CLIENT_KEY }, models: { 'cc-model': {} } } },
    }));
    mock.reset().reply(() => ({ text: FINAL('opencode') }));
    const r = await run(bin('opencode'), ['run', '-m', 'cliproxy/cc-model', 'Reply with the done line'], {
      cwd: sb.work,
      env: { HOME: sb.home, XDG_CONFIG_HOME: path.join(sb.home, '.config'), OPENCODE_DISABLE_AUTOUPDATE: '1' },
    });
    debug('opencode');
    assert.equal(r.code, 0, why(r));
    assert.match(r.stdout, new RegExp(FINAL('opencode').replace(/[().]/g, '\\$&')), why(r));
    const gens = mock.requests.filter((q) => q.path === '/v1/chat/completions');
    assert.ok(gens.length >= 1, why(r));
    assert.ok(gens.every((q) => q.body.model === 'mock-chat-up'));
    assert.ok(gens.some((q) => (q.body.tools || []).length > 0), 'the main call carries opencode tools');
  } finally {
    sb.cleanup();
  }
});
