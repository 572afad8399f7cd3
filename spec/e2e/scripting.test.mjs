// Issue 6: scripting. Middleware hook order and semantics through the real
// binary, `cliproxy check` on good and broken setups, the sandbox, script
// errors and the memory cap, reloads on script and config edits (broken
// edits keep the working generation), a reload storm under continuous load
// with no failed request, and every example's test (examples/*/example.test.mjs).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { waitFor } from './lib/wait.mjs';
import { startProxy, buildConfig, BIN, ROOT, SCRATCH } from './lib/proxy.mjs';

import '../../examples/custom-provider/example.test.mjs';
import '../../examples/custom-translation/example.test.mjs';
import '../../examples/request-rewriting/example.test.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tmpdir(tag) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `cpx-scripting-${tag}-`));
}

// Writes files under dir: { 'middleware/x.lua': '...' }.
function writeTree(dir, files) {
  for (const [rel, text] of Object.entries(files)) {
    const p = path.join(dir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, text);
  }
}

// Replaces a file the way editors do: write a temporary file, rename it.
function replaceFile(p, text) {
  const tmp = `${p}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, p);
}

function upstreamEntry(mock) {
  return [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-key'], models: [{ name: 'up-model', alias: 'm' }] }];
}

async function chat(proxy, body = {}, headers = {}, route = '/v1/chat/completions') {
  const r = await fetch(proxy.url + route, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client', ...headers },
    body: JSON.stringify({ model: 'm', max_tokens: 50, messages: [{ role: 'user', content: 'hello' }], ...body }),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* stream */ }
  return { status: r.status, text, json, headers: r.headers };
}

// Runs fn; a failure also says whether the proxy is still up, the fetch's
// own cause and the proxy's last log lines (the memory-cap tests failed
// once in CI with only "fetch failed" to go on).
async function explained(proxy, fn) {
  try {
    return await fn();
  } catch (e) {
    const cause = e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message || e.cause})` : '';
    const tail = proxy.stderr().split('\n').slice(-25).join('\n');
    e.message = `${e.message}${cause}; proxy exited: ${JSON.stringify(proxy.exited())}\n--- proxy stderr (tail)\n${tail}`;
    throw e;
  }
}

function streamText(text) {
  return text.split('\n').filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]')
    .map((l) => JSON.parse(l.slice(6)).choices?.[0]?.delta?.content || '').join('');
}


function check(configPath) {
  const r = spawnSync(BIN, ['check', '-config', configPath], { cwd: SCRATCH, encoding: 'utf8', timeout: 20000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// ---------------------------------------------------------------- hooks

const PROBE = `
-- Records every phase in ctx.shared.trace; settings pick what else it does.
local cpx = require("cpx")
local concat = table.concat

local _M = { name = "probe", priority = 10, schema = {
  tag = { type = "string", required = true },
  upper = { type = "boolean", default = false },
}, hooks = {} }

local function rec(conf, ctx, phase)
  local t = ctx.shared.trace or {}
  ctx.shared.trace = t
  t[#t + 1] = conf.tag .. ":" .. phase
  ctx.plugin.n = (ctx.plugin.n or 0) + 1
end

function _M.hooks.access(conf, ctx)
  rec(conf, ctx, "access")
  if ctx.info.headers["x-deny"] == conf.tag then return 403, "denied by " .. conf.tag end
  cpx.sleep(0.001) -- access may yield
end

function _M.hooks.rewrite(conf, ctx, body)
  rec(conf, ctx, "rewrite")
  if conf.upper then body.messages[1].content = body.messages[1].content .. " (rewritten)" end
end

function _M.hooks.before_upstream(conf, ctx, ureq)
  rec(conf, ctx, "before_upstream")
  ureq.headers["X-Probe-" .. conf.tag] = concat(ctx.shared.trace, ",") .. ";n=" .. ctx.plugin.n
end

function _M.hooks.on_headers(conf, ctx, status, headers)
  rec(conf, ctx, "on_headers:" .. status)
end

function _M.hooks.on_chunk(conf, ctx, ev)
  if conf.upper and ev.t == "delta" and ev.text then ev.text = ev.text:upper() end
  if ev.t == "finish" and not ctx.plugin.chunk_seen then
    ctx.plugin.chunk_seen = true
    rec(conf, ctx, "on_chunk")
  end
end

function _M.hooks.after(conf, ctx, res)
  rec(conf, ctx, "after")
  if res.body then
    local m = res.body.choices[1].message
    m.content = m.content .. "[" .. conf.tag .. "]"
  end
end

function _M.hooks.log(conf, ctx, res)
  rec(conf, ctx, "log")
  cpx.log("info", "probe " .. conf.tag .. " trace=" .. concat(ctx.shared.trace, ",") .. " status=" ..
    tostring(res.status))
end

return _M
`;

describe('middleware hooks through the server', () => {
  let mock, proxy, dir;
  before(async () => {
    mock = await startMock();
    dir = tmpdir('hooks');
    writeTree(dir, { 'middleware/probe.lua': PROBE });
    proxy = await startProxy({
      apiKeys: ['sk-client'], openaiCompat: upstreamEntry(mock),
      extra: { lua: { paths: [dir], middleware: [
        { name: 'probe', tag: 'b' },
        { name: 'probe', tag: 'a', priority: 20, upper: true },
      ] } },
    });
  });
  after(async () => {
    await proxy?.stop();
    await mock?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('phases run in priority order with per-entry and per-request state', async () => {
    mock.reply({ text: 'hello there' });
    const n = mock.requests.length;
    const r = await chat(proxy);
    assert.equal(r.status, 200, r.text);
    const up = mock.requests[n];
    assert.equal(up.headers['x-probe-a'], 'a:access,b:access,a:rewrite,b:rewrite,a:before_upstream;n=3');
    assert.equal(up.headers['x-probe-b'],
      'a:access,b:access,a:rewrite,b:rewrite,a:before_upstream,b:before_upstream;n=3');
    assert.equal(up.body.messages[0].content, 'hello (rewritten)');
    // after: a (higher priority) first; on_chunk does not run for non-streams
    assert.equal(r.json.choices[0].message.content, 'hello there[a][b]');
    // (health probes log too, with a trace of only a:log,b:log)
    const line = await waitFor(() => proxy.stderr().match(/probe b trace=(a:access\S+) status=200/), 2000);
    assert.ok(line, proxy.stderr());
    assert.equal(line[1], 'a:access,b:access,a:rewrite,b:rewrite,a:before_upstream,b:before_upstream,'
      + 'a:on_headers:200,b:on_headers:200,a:after,b:after,a:log,b:log');
  });

  test('streams: on_chunk edits IR events; after and log run when the stream ends', async () => {
    mock.reply({ text: 'one two three', chunks: 3 });
    const r = await chat(proxy, { stream: true });
    assert.equal(r.status, 200);
    assert.equal(streamText(r.text), 'ONE TWO THREE');
    const line = await waitFor(() => [...proxy.stderr().matchAll(/probe b trace=(a:access\S+) status=200/g)][1], 2000);
    assert.ok(line, proxy.stderr());
    assert.match(line[1], /a:on_headers:200,b:on_headers:200,a:on_chunk,b:on_chunk,a:after,b:after,a:log,b:log$/);
  });

  test('access rejects in the client format and stops the chain', async () => {
    const n = mock.requests.length;
    let r = await chat(proxy, {}, { 'x-deny': 'a' });
    assert.equal(r.status, 403);
    assert.equal(r.json.error.message, 'denied by a');
    r = await chat(proxy, { max_tokens: 10 }, { 'x-deny': 'b' }, '/v1/messages');
    assert.equal(r.status, 403);
    assert.equal(r.json.type, 'error');
    assert.equal(r.json.error.type, 'permission_error');
    assert.equal(r.json.error.message, 'denied by b');
    assert.equal(mock.requests.length, n);
    const line = await waitFor(() => proxy.stderr().match(/probe b trace=(\S+) status=403/), 2000);
    assert.equal(line?.[1], 'a:access,a:log,b:log');
  });

  test("the log phase sees the status of cliproxy's own error answers", async () => {
    const r = await chat(proxy, { model: 'no-such-model-for-log' });
    assert.equal(r.status, 502);
    const line = await waitFor(() => proxy.stderr().match(/probe b trace=(\S+) status=502/), 2000);
    assert.ok(line, proxy.stderr().slice(-1500));
  });
});

describe('redact on streams', () => {
  let mock, proxy;
  before(async () => {
    mock = await startMock();
    proxy = await startProxy({
      apiKeys: ['sk-client'], openaiCompat: upstreamEntry(mock),
      extra: { lua: { middleware: [{ name: 'redact', patterns: ['sk%-live%-%w+'] }] } },
    });
  });
  after(async () => {
    await proxy?.stop();
    await mock?.close();
  });

  // The secret reaches the proxy in three upstream events.
  const pieces = ['Use sk-li', 've-9f8e7d', '6c5b4a and go.'];

  test('a secret split across upstream events never reaches an OpenAI client', async () => {
    mock.reply({ text: pieces.join(''), chunks: pieces });
    const r = await chat(proxy, { stream: true });
    assert.equal(r.status, 200);
    assert.equal(streamText(r.text), 'Use [REDACTED] and go.');
    assert.doesNotMatch(r.text, /9f8e7d|6c5b4a|sk-li/);
  });

  test('nor an Anthropic client (translated stream)', async () => {
    mock.reply({ text: pieces.join(''), chunks: pieces });
    const r = await chat(proxy, { stream: true }, { 'anthropic-version': '2023-06-01' }, '/v1/messages');
    assert.equal(r.status, 200);
    const text = r.text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)))
      .filter((e) => e.type === 'content_block_delta').map((e) => e.delta.text).join('');
    assert.equal(text, 'Use [REDACTED] and go.');
    assert.doesNotMatch(r.text, /9f8e7d|6c5b4a|sk-li/);
  });
});

// ---------------------------------------------------------------- check

describe('cliproxy check', () => {
  let dir;
  before(() => { dir = tmpdir('check'); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cfg = (extra) => `port: 18317\napi-keys: ["k"]\n${extra}`;

  test('a good setup exits 0 (each example, and a config with built-in middleware)', () => {
    for (const ex of ['custom-provider', 'custom-translation', 'request-rewriting']) {
      const r = check(path.join(ROOT, 'examples', ex, 'config.yaml'));
      assert.equal(r.code, 0, `${ex}: ${r.err}`);
      assert.match(r.out, /: ok/);
    }
    const p = path.join(dir, 'good.yaml');
    fs.writeFileSync(p, cfg(`lua:
  middleware:
    - name: request_id
    - name: body_patch
      set: { temperature: 0.3, "generationConfig.temperature": 0.3 }
    - name: redact
      patterns: ["sk%-%w+"]
`));
    const r = check(p);
    assert.equal(r.code, 0, r.err);
  });

  test('a module with a wrong shape: non-zero, file and field', () => {
    writeTree(dir, { 'shape/middleware/bad.lua': 'return { name = "bad", priority = "high", schema = {}, hooks = {} }\n' });
    const p = path.join(dir, 'shape.yaml');
    fs.writeFileSync(p, cfg('lua:\n  paths: [shape]\n  middleware:\n    - name: bad\n'));
    const r = check(p);
    assert.equal(r.code, 1);
    assert.match(r.err, /middleware\/bad\.lua: field 'priority' must be a number/);
    // a provider override with a wrong shape too
    writeTree(dir, { 'prov/providers/openai_compat.lua': 'return { name = "x", format = "openai_chat" }\n' });
    fs.writeFileSync(p, cfg('lua:\n  paths: [prov]\n'));
    const r2 = check(p);
    assert.equal(r2.code, 1);
    assert.match(r2.err, /providers\/openai_compat\.lua: field 'prepare' must be a function/);
  });

  test('an override of an engine module (rt/) is said; one of a lib/ helper is not', () => {
    // rt.payload is required at every start: a copy of it under the user's
    // path is a fork of the engine, and check names the file.
    const engine = fs.readFileSync(path.join(ROOT, 'lua/rt/payload.lua'), 'utf8');
    const schema = fs.readFileSync(path.join(ROOT, 'lua/lib/schema.lua'), 'utf8');
    writeTree(dir, { 'eng/rt/payload.lua': engine, 'eng/lib/schema.lua': schema });
    const p = path.join(dir, 'eng.yaml');
    fs.writeFileSync(p, cfg('lua:\n  paths: [eng]\n'));
    const r = check(p);
    assert.equal(r.code, 0, r.err);
    const all = r.out + r.err;
    assert.match(all, /eng\/rt\/payload\.lua replaces the engine module rt\.payload/);
    assert.doesNotMatch(all, /replaces the engine module lib\./);
    assert.doesNotMatch(all, /schema\.lua replaces/);
  });

  test('config type errors: non-zero, config file:line and key', () => {
    const p = path.join(dir, 'types.yaml');
    fs.writeFileSync(p, cfg('lua:\n  middleware:\n    - name: route_by_header\n      header: 42\n      routes: {}\n'));
    let r = check(p);
    assert.equal(r.code, 1);
    assert.equal(r.err.trim(), `${p}:6: lua.middleware.1.header: expected a string, got number 42`);
    fs.writeFileSync(p, cfg('port: "eighty"\n').replace('port: 18317\n', ''));
    r = check(p);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+: port: expected an integer`));
    fs.writeFileSync(p, cfg('lua:\n  middleware:\n    - name: no_such_thing\n'));
    r = check(p);
    assert.equal(r.code, 1);
    assert.match(r.err, /:5: lua\.middleware\.1\.name: no middleware 'no_such_thing'/);
  });

  test('a Lua syntax error: non-zero, file:line', () => {
    writeTree(dir, { 'syn/middleware/broken.lua': 'local _M = {\n  name = "broken",\n  priority = 1 +\n}\nreturn _M\n' });
    const p = path.join(dir, 'syn.yaml');
    fs.writeFileSync(p, cfg('lua:\n  paths: [syn]\n  middleware:\n    - name: broken\n'));
    let r = check(p);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`${path.join(dir, 'syn/middleware/broken.lua')}:4: unexpected symbol`));
    // in an override of a built-in translator
    writeTree(dir, { 'syn2/translators/claude.lua': 'local x = = 1\n' });
    fs.writeFileSync(p, cfg('lua:\n  paths: [syn2]\n'));
    r = check(p);
    assert.equal(r.code, 1);
    assert.match(r.err, /syn2\/translators\/claude\.lua:1: unexpected symbol/);
  });
});

// ---------------------------------------------------------------- safety

const ESCAPE = `
-- Tries every way out of the sandbox at load time and reports what it found.
local results = {}
local function probe(name, fn)
  local ok, v = pcall(fn)
  if ok and v ~= nil then results[#results + 1] = name .. "=REACHABLE(" .. type(v) .. ")"
  else results[#results + 1] = name .. "=no" end
end
probe("ffi", function() return require("ffi") end)
probe("debug", function() return debug end)
probe("io", function() return io end)
probe("os.execute", function() return os.execute end)
probe("os.getenv", function() return os.getenv end)
probe("os.exit", function() return os.exit end)
probe("os.remove", function() return os.remove end)
probe("package", function() return package end)
probe("load", function() return load end)
probe("loadstring", function() return loadstring end)
probe("loadfile", function() return loadfile end)
probe("dofile", function() return dofile end)
probe("string.dump", function() return string.dump end)
probe("method_dump", function() return ("").dump end)
probe("getfenv", function() return getfenv end)
probe("setfenv", function() return setfenv end)
probe("collectgarbage", function() return collectgarbage end)
probe("newproxy", function() return newproxy end)
probe("bytecode_module", function() return require("bytecode_mod") end)
probe("path_escape", function() return require("../../etc/passwd") end)
probe("global_write", function() leaked_global = 1 return leaked_global end)

-- The standard libraries by name (the loader's _LOADED lookup).
local native = {}
local function probe_require(name, field)
  local ok, v = pcall(require, name)
  if ok and type(v) == "table" and (field == nil or v[field] ~= nil) then
    native[#native + 1] = name .. (field and ("." .. field) or "") .. "=REACHABLE"
  else
    native[#native + 1] = name .. "=no"
  end
end
probe_require("debug", "getregistry")
probe_require("io", "popen")
probe_require("os", "execute")
probe_require("package", "loadlib")
probe_require("jit")
probe_require("_G", "loadstring")

local _M = { name = "escape", priority = 1, schema = {}, hooks = {} }
function _M.hooks.before_upstream(conf, ctx, ureq)
  ureq.headers["X-Escape"] = table.concat(results, " ")
  ureq.headers["X-Escape-Native"] = table.concat(native, " ")
end
return _M
`;

const FAULTS = `
-- Script errors on demand: x-fault: error | alloc | chunk
local _M = { name = "faults", priority = 1, schema = {}, hooks = {} }

local function explode()
  error("kaboom from a user script")
end

function _M.hooks.rewrite(conf, ctx, body)
  local f = ctx.info.headers["x-fault"]
  if f == "error" then explode() end
  if f == "bigstring" then return string.rep("x", 64 * 1024 * 1024) end
  if f == "alloc" then
    local t = {}
    for i = 1, 1e9 do t[i] = { i, tostring(i) .. string.rep("x", 64) } end
  end
end

function _M.hooks.on_chunk(conf, ctx, ev)
  if ctx.info.headers["x-fault"] == "chunk" and ev.t == "delta" then error("chunk hook failed") end
end

return _M
`;

describe('sandbox, script errors and the memory cap', () => {
  let mock, proxy, dir;
  before(async () => {
    mock = await startMock();
    mock.reply({ text: 'fine' });
    dir = tmpdir('safety');
    writeTree(dir, { 'middleware/escape.lua': ESCAPE, 'middleware/faults.lua': FAULTS });
    fs.writeFileSync(path.join(dir, 'bytecode_mod.lua'), Buffer.from([0x1b, 0x4c, 0x4a, 0x02, 0x00]));
    proxy = await startProxy({
      apiKeys: ['sk-client'], openaiCompat: upstreamEntry(mock),
      extra: { lua: { paths: [dir], 'memory-limit-mb': 32,
                      middleware: [{ name: 'escape' }, { name: 'faults' }] } },
    });
  });
  after(async () => {
    await proxy?.stop();
    await mock?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('user scripts cannot reach ffi, debug, io, os.execute, package.loadlib, load*, bytecode', async () => {
    const n = mock.requests.length;
    const r = await chat(proxy);
    assert.equal(r.status, 200, r.text);
    const found = mock.requests[n].headers['x-escape'];
    const reachable = found.split(' ').filter((x) => !x.endsWith('=no'));
    assert.deepEqual(reachable, [], found);
    assert.match(found, /ffi=no/);
    assert.match(found, /bytecode_module=no/);
  });

  test('a script error is a clean error in the client format and a log line with a traceback', async () => {
    let r = await chat(proxy, {}, { 'x-fault': 'error' });
    assert.equal(r.status, 500);
    assert.equal(r.json.error.type, 'server_error');
    assert.match(r.json.error.message, /faults\.lua:\d+: kaboom from a user script/);
    r = await chat(proxy, { max_tokens: 10 }, { 'x-fault': 'error' }, '/v1/messages');
    assert.equal(r.status, 500);
    assert.equal(r.json.type, 'error');
    assert.equal(r.json.error.type, 'api_error');
    assert.match(r.json.error.message, /kaboom/);
    const log = await waitFor(() => /script error:.*kaboom[\s\S]*stack traceback:[\s\S]*faults\.lua:\d+: in function 'explode'/
      .test(proxy.stderr()), 2000);
    assert.ok(log, proxy.stderr());
    assert.equal((await chat(proxy)).status, 200);
  });

  test('an error in a chunk hook ends the stream cleanly; the server keeps serving', async () => {
    const r = await chat(proxy, { stream: true }, { 'x-fault': 'chunk' });
    assert.equal(r.status, 200);
    assert.match(r.text, /data: \{"error":/);
    assert.ok(await waitFor(() => /chunk hook failed/.test(proxy.stderr()), 2000));
    const ok = await chat(proxy, { stream: true });
    assert.equal(streamText(ok.text), 'fine');
  });

  test('requiring a standard library by name gives nothing back', async () => {
    const n = mock.requests.length;
    await chat(proxy);
    const found = mock.requests[n].headers['x-escape-native'];
    assert.deepEqual(found.split(' ').filter((x) => !x.endsWith('=no')), [], found);
  });

  test('the VM memory cap holds: an allocation past it fails the request, not the server', () => explained(proxy, async () => {
    for (let i = 0; i < 3; i++) {
      const r = await chat(proxy, {}, { 'x-fault': 'bigstring' });
      assert.equal(r.status, 500, r.text);
      assert.match(r.json.error.message, /not enough memory/);
      const ok = await chat(proxy);
      assert.equal(ok.status, 200, ok.text);
    }
  }));

  test('the VM memory cap holds: unbounded allocation fails the request, not the server', () => explained(proxy, async () => {
    for (let i = 0; i < 3; i++) {
      const r = await chat(proxy, {}, { 'x-fault': 'alloc' });
      assert.equal(r.status, 500, r.text);
      assert.match(r.text, /memory/);
      const ok = await chat(proxy);
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.json.choices[0].message.content, 'fine');
    }
    assert.equal(proxy.exited(), null);
    assert.ok(proxy.rssKiB() < 400 * 1024, `rss ${proxy.rssKiB()} KiB`);
  }));
});

// ---------------------------------------------------------------- reload

const STAMP = (v) => `
local cpx = require("cpx")
local _M = { name = "stamp", priority = 1, schema = {}, hooks = {} }
function _M.hooks.before_upstream(conf, ctx, ureq)
  ureq.headers["X-Stamp"] = "${v}"
  ureq.headers["X-Gen"] = tostring(cpx.generation())
end
return _M
`;

describe('reload on script and config edits', () => {
  let mock, proxy, dir;
  const config = (middleware, extra = {}) => buildConfig({
    port: proxy.port, apiKeys: ['sk-client'], openaiCompat: upstreamEntry(mock), authDir: path.join(proxy.dir, 'auths'),
    extra: { lua: { paths: [dir], middleware }, ...extra },
  });
  const stampNow = async () => {
    const n = mock.requests.length;
    const r = await chat(proxy);
    assert.equal(r.status, 200, r.text);
    return mock.requests[n].headers['x-stamp'];
  };

  before(async () => {
    mock = await startMock();
    mock.reply({ text: 'ok' });
    dir = tmpdir('reload');
    writeTree(dir, { 'middleware/stamp.lua': STAMP('v1') });
    proxy = await startProxy({ apiKeys: ['sk-client'], openaiCompat: upstreamEntry(mock),
      extra: { lua: { paths: [dir], middleware: [{ name: 'stamp' }] } } });
  });
  after(async () => {
    await proxy?.stop();
    await mock?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('editing a script reloads without a restart (the script watcher, no SIGHUP)', async () => {
    assert.equal(await stampNow(), 'v1');
    replaceFile(path.join(dir, 'middleware/stamp.lua'), STAMP('v2'));
    const v = await waitFor(async () => (await stampNow()) === 'v2', 5000, 100);
    assert.ok(v, `no reload after a script edit\n${proxy.stderr()}`);
    assert.ok(await waitFor(() => /reloaded \(script changed\)/.test(proxy.stderr()), 2000), proxy.stderr());
  });

  test('a broken script edit is reported with file and line; the old generation keeps serving', async () => {
    const p = path.join(dir, 'middleware/stamp.lua');
    replaceFile(p, 'local _M = {\nreturn _M\n');
    const msg = await waitFor(() => proxy.stderr().match(/reload \(script changed\) rejected, keeping generation \d+: (.*)/),
      5000);
    assert.ok(msg, proxy.stderr());
    assert.match(msg[1], new RegExp(`${p}:2: `));
    for (let i = 0; i < 5; i++) assert.equal(await stampNow(), 'v2');
    replaceFile(p, STAMP('v3'));
    assert.ok(await waitFor(async () => (await stampNow()) === 'v3', 5000, 100));
  });

  test('a user file replaces a built-in module of the same relative name', async () => {
    writeTree(dir, { 'middleware/system_prompt.lua': `
      local _M = { name = "system_prompt", priority = 1, schema = { text = { type = "string" } }, hooks = {} }
      function _M.hooks.rewrite(conf, ctx, body) body.messages[1].content = "overridden: " .. conf.text end
      return _M` });
    fs.writeFileSync(proxy.configPath, config([{ name: 'stamp' }, { name: 'system_prompt', text: 'T' }]));
    const ok = await waitFor(async () => {
      const n = mock.requests.length;
      await chat(proxy);
      return mock.requests[n].body.messages[0].content === 'overridden: T';
    }, 5000, 100);
    assert.ok(ok, proxy.stderr());
  });

  test('a config type error on reload is reported with file:line; the old setup keeps serving', async () => {
    fs.writeFileSync(proxy.configPath, config([{ name: 'stamp' }, { name: 'system_prompt', text: 5 }]));
    const msg = await waitFor(() => proxy.stderr().match(/reload \(config file changed\) rejected, keeping generation \d+: (.*)/),
      5000);
    assert.ok(msg, proxy.stderr());
    assert.match(msg[1], /config\.yaml:\d+: lua\.middleware\.2\.text: expected a string, got number 5/);
    const n = mock.requests.length;
    await chat(proxy);
    assert.equal(mock.requests[n].body.messages[0].content, 'overridden: T');
    fs.rmSync(path.join(dir, 'middleware/system_prompt.lua'));
    fs.writeFileSync(proxy.configPath, config([{ name: 'stamp' }]));
  });

  test('generations swap under continuous load (config rewrites and SIGHUP) with no failed request', async () => {
    mock.reply({ text: 'a b c d e', chunks: 5, eventDelayMs: 20 });
    let stop = false;
    const failures = [];
    const gens = new Set();
    let done = 0;
    const loop = async (i) => {
      while (!stop) {
        const stream = i % 2 === 0;
        try {
          const n = mock.requests.length;
          const r = await chat(proxy, { stream });
          const text = stream ? streamText(r.text) : r.json?.choices?.[0]?.message?.content;
          if (r.status !== 200 || text !== 'a b c d e') failures.push(`${r.status} ${r.text.slice(0, 200)}`);
          const g = mock.requests[n]?.headers['x-gen'];
          if (g) gens.add(g);
          done++;
        } catch (e) {
          failures.push(String(e));
        }
      }
    };
    const loops = [0, 1, 2, 3, 4, 5].map(loop);
    for (let k = 0; k < 6; k++) {
      await sleep(250);
      if (k % 2 === 0) {
        fs.writeFileSync(proxy.configPath, config([{ name: 'stamp' }, { name: 'request_id', header: `X-Req-${k}` }]));
      } else {
        proxy.child.kill('SIGHUP');
      }
    }
    await sleep(400);
    stop = true;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    assert.ok(done > 30, `only ${done} requests`);
    assert.ok(gens.size >= 4, `generations seen: ${[...gens]}`);
    assert.equal(proxy.exited(), null);
  });
});
