// A Lua VM at its memory cap (lua.memory-limit-mb) must not take the
// process down. A user middleware keeps 8 KB per request in a module-level
// table (the leak users write), the cap is 16 MiB, and many concurrent
// requests fill it: every answer is a 200 or a well-formed OpenAI error
// envelope naming the cap, the process stays up, /healthz answers, a log
// line names the generation and the setting, and a fresh generation (a
// SIGHUP reload, or the automatic recycle of lua.memory-recycle) serves
// again. Before the fix the process died with SIGSEGV in libluajit within
// seconds of the first "not enough memory" (an out-of-memory error raised
// from JIT-compiled code).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, healthz } from './lib/proxy.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const HOARD = `
local kept = {}
local _M = { name = "hoard", priority = 10, schema = {}, hooks = {} }
function _M.hooks.rewrite(conf, ctx, body)
  kept[#kept + 1] = string.rep("k", 8192) .. #kept
end
return _M
`;

const BODY = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello' }] });

// One POST over agent; resolves { status, json, text } or { error }.
function post(url, agent) {
  return new Promise((resolve) => {
    const req = http.request(`${url}/v1/chat/completions`, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client',
                 'content-length': Buffer.byteLength(BODY) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        let json = null;
        try { json = JSON.parse(text); } catch { /* checked below */ }
        resolve({ status: res.statusCode, json, text });
      });
      res.on('error', (e) => resolve({ error: String(e) }));
    });
    req.on('error', (e) => resolve({ error: String(e) }));
    req.end(BODY);
  });
}

// n requests, `conc` at a time over one keep-alive agent of conc sockets.
async function load(url, n, conc) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
  const out = [];
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await post(url, agent);
    }
  };
  await Promise.all(Array.from({ length: conc }, lane));
  agent.destroy();
  return out;
}

// Every answer is a chat completion or an OpenAI error envelope naming the
// cap; returns the counts.
function classify(results, proxy) {
  let ok = 0, capped = 0;
  for (const r of results) {
    assert.equal(r.error, undefined,
      `transport error: ${r.error}; proxy exit: ${JSON.stringify(proxy.exited())}`);
    if (r.status === 200) {
      assert.equal(r.json?.object, 'chat.completion', r.text);
      assert.equal(r.json.choices[0].message.content, 'fine');
      ok++;
      continue;
    }
    assert.equal(r.status, 500, r.text);
    assert.ok(r.json && typeof r.json.error === 'object', `not an OpenAI envelope: ${r.text}`);
    assert.equal(typeof r.json.error.message, 'string');
    assert.equal(r.json.error.type, 'server_error', r.text);
    assert.match(r.json.error.message, /memory.*lua\.memory-limit-mb/, r.text);
    capped++;
  }
  return { ok, capped };
}

async function waitFor(fn, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return true;
    await sleep(50);
  }
  return fn();
}

function setup(recycle) {
  const ctx = {};
  before(async () => {
    ctx.mock = await startMock();
    ctx.mock.reply({ text: 'fine' });
    ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-lua-memory-'));
    fs.mkdirSync(path.join(ctx.dir, 'middleware'));
    fs.writeFileSync(path.join(ctx.dir, 'middleware/hoard.lua'), HOARD);
    ctx.proxy = await startProxy({
      apiKeys: ['sk-client'],
      openaiCompat: [{ name: 'mock', baseUrl: `${ctx.mock.url}/v1`, keys: ['up-key'],
                       models: [{ name: 'up-model', alias: 'm' }] }],
      extra: { 'fast-path': false,
               lua: { paths: [ctx.dir], 'memory-limit-mb': 16, 'memory-recycle': recycle,
                      middleware: [{ name: 'hoard' }] } },
    });
  });
  after(async () => {
    await ctx.proxy?.stop();
    await ctx.mock?.close();
    if (ctx.dir) fs.rmSync(ctx.dir, { recursive: true, force: true });
  });
  return ctx;
}

describe('a Lua VM at its memory cap, without recycling', () => {
  const ctx = setup(false);

  test('requests past the cap fail in the client format; the process stays up; a reload serves again', async () => {
    const { proxy } = ctx;
    // 16 MiB hold fewer than 2048 requests' 8 KB: this many fill the cap.
    const { ok, capped } = classify(await load(proxy.url, 3000, 32), proxy);
    assert.ok(capped > 0, `the cap was never reached (${ok} answered 200)\n${proxy.stderr().slice(-2000)}`);
    assert.ok(ok > 0);
    assert.equal(proxy.exited(), null, proxy.stderr().slice(-3000));
    // /healthz is answered: 200, or a 500 while the generation it runs on
    // has no memory left for it (it stays full: nothing recycles it here).
    const h = await healthz(proxy.url, 5000);
    assert.ok(h.status === 200 || (h.status === 500 && /memory/.test(h.text)), `${h.status} ${h.text}`);
    assert.match(proxy.stderr(),
      /Lua generation 1 \(worker 0\) reached its memory cap \(lua\.memory-limit-mb: 16\)[^\n]*Raise lua\.memory-limit-mb/);
    assert.doesNotMatch(proxy.stderr(), /starting a fresh generation/);
    // Still full: a request that needs memory still fails, cleanly.
    const still = classify(await load(proxy.url, 50, 8), proxy);
    assert.ok(still.capped > 0, 'the generation should still be at its cap');

    proxy.child.kill('SIGHUP');
    assert.ok(await waitFor(() => /reloaded \(SIGHUP\): worker 0 generation 2/.test(proxy.stderr()), 10000),
      proxy.stderr().slice(-2000));
    assert.equal((await healthz(proxy.url, 5000)).status, 200);
    const after = classify(await load(proxy.url, 200, 16), proxy);
    assert.equal(after.capped, 0, 'a fresh generation serves every request');
    assert.equal(after.ok, 200);
    assert.equal(proxy.exited(), null);
  });
});

describe('a Lua VM at its memory cap, recycled (lua.memory-recycle)', () => {
  const ctx = setup(true);

  test('a generation that stays at its cap is replaced and requests succeed again', async () => {
    const { proxy } = ctx;
    const results = await load(proxy.url, 6000, 32);
    const { ok } = classify(results, proxy);
    assert.equal(proxy.exited(), null, proxy.stderr().slice(-3000));
    // A /healthz that meets a full generation fails, and that refusal
    // recycles it: the next ones answer 200.
    assert.ok(await waitFor(async () => (await healthz(proxy.url, 5000)).status === 200, 10000));
    const log = proxy.stderr();
    assert.match(log, /Lua generation 1 \(worker 0\) reached its memory cap \(lua\.memory-limit-mb: 16\)/);
    assert.match(log, /Lua generation 1 \(worker 0\) stays at its memory cap[^\n]*starting a fresh generation/);
    assert.match(log, /reloaded \(Lua memory cap\): worker 0 generation 2/);
    // More than one generation's worth of requests succeeded: the fresh
    // generations served after the first one filled up.
    assert.ok(ok > 2048, `only ${ok} of ${results.length} answered 200`);
    const firstFail = results.findIndex((r) => r.status !== 200);
    assert.ok(firstFail >= 0);
    assert.ok(results.slice(firstFail + 1).some((r) => r.status === 200), 'no success after the cap was hit');
  });
});
