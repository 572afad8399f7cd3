// Issue 17: background tasks and locks through the real binary. A probe
// middleware starts cpx.timer tasks from init_worker: a timer that runs
// with no request (with its arguments), every, a fetch inside a task, a
// failing task (logged with its traceback, the worker lives on), pending
// and running tasks at a reload and at SIGTERM; cpx.lock across 2 workers
// and across 2 processes (a mock counts how many are inside at once), and
// locks released when their request is aborted or their handler fails.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startProxy } from './lib/proxy.mjs';
import { sleep, waitFor } from './lib/wait.mjs';


const PROBE = `
local cpx = require("cpx")
local M = { name = "tprobe", priority = 1, hooks = {},
            schema = { mode = { type = "string", default = "basic" }, mock = { type = "string" },
                       lockfile = { type = "string" }, rounds = { type = "integer", default = 5 } } }

local function say(...) cpx.log("warn", "probe " .. table.concat({ ... }, " ")) end

local function critical(conf, tag)
  local f = assert(cpx.fetch({ url = conf.mock .. "/enter?who=" .. tag }))
  f:body()
  cpx.sleep(0.03)
  f = assert(cpx.fetch({ url = conf.mock .. "/leave?who=" .. tag }))
  f:body()
end

function M.init_worker(conf)
  local w, g = cpx.worker_id(), cpx.generation()
  if conf.mode == "basic" then
    assert(cpx.timer.at(0, function(premature, a, b)
      say("at", "w=" .. w, "g=" .. g, "premature=" .. tostring(premature), "args=" .. a .. "," .. b)
      local f, err = cpx.fetch({ url = conf.mock .. "/task?w=" .. w })
      if not f then return say("fetch-failed", tostring(err)) end
      say("fetched", "w=" .. w, "status=" .. f:status(), "body=" .. f:body())
    end, "x", 42))
    local n = 0
    assert(cpx.timer.every(0.02, function(premature)
      if premature then return end
      n = n + 1
      if n == 3 then say("every3", "w=" .. w, "g=" .. g) end
    end))
    assert(cpx.timer.at(3600, function(premature)
      local ok, err = cpx.sleep(1)
      say("long", "w=" .. w, "g=" .. g, "premature=" .. tostring(premature), "sleep=" .. tostring(err))
    end))
    assert(cpx.timer.at(0, function()
      local ok, err = cpx.sleep(3600)
      say("sleeper", "w=" .. w, "g=" .. g, "woke=" .. tostring(err))
    end))
    assert(cpx.timer.at(0, function() local function inner() error("probe boom") end inner() end))
    -- One task waits on the threadpool; another spins on cpx.sleep(0) until
    -- it is done. (A 0 ms timer per sleep(0) kept the loop in its timers
    -- phase: the threadpool's answer never came and the worker hung.)
    local counted
    assert(cpx.timer.at(0, function()
      counted = cpx.tokens.count_async(string.rep("spin and count ", 20000), "cl100k_base") or -1
    end))
    assert(cpx.timer.at(0, function()
      local turns = 0
      while not counted do
        assert(cpx.sleep(0))
        turns = turns + 1
      end
      say("spun", "w=" .. w, "tokens=" .. counted, "turns>0=" .. tostring(turns > 0))
    end))
  elseif conf.mode == "lock" then
    assert(cpx.timer.at(0, function()
      for i = 1, conf.rounds do
        local lk, err = cpx.lock("probe", { file = conf.lockfile, timeout = 60 })
        if not lk then return say("lock-failed", tostring(err)) end
        critical(conf, w)
        assert(lk:release())
      end
      say("lock-done", "w=" .. w)
    end))
  end
end

-- Requests: x-probe: hold (takes the lock, tells the mock, waits),
-- fail (takes it, raises), take (waits at most 5 s for it).
function M.hooks.access(conf, ctx)
  local what = ctx.info.headers["x-probe"]
  if not what then return true end
  if what == "hold" then
    local lk = cpx.lock("req-lock", { timeout = 5 })
    if not lk then return 409, "hold: no lock" end
    cpx.fetch({ url = conf.mock .. "/holding" })
    cpx.sleep(30)
    return 409, "hold: done"
  elseif what == "fail" then
    assert(cpx.lock("req-lock", { timeout = 5 }))
    error("probe fails while holding the lock")
  end
  local lk, err = cpx.lock("req-lock", { timeout = 5 })
  return 409, lk and "take: got it" or ("take: " .. tostring(err))
end

return M
`;

// The mock: counts who is inside the critical section.
async function startCounter() {
  const st = { inside: 0, most: 0, enters: 0, task: 0, holding: 0, holdWaiters: [] };
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (u.pathname === '/enter') { st.inside++; st.enters++; st.most = Math.max(st.most, st.inside); }
    if (u.pathname === '/leave') st.inside--;
    if (u.pathname === '/task') st.task++;
    if (u.pathname === '/holding') { st.holding++; st.holdWaiters.splice(0).forEach((f) => f()); }
    res.end('ok:' + u.pathname);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { st, url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => srv.close(r)) };
}

function probeDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-tasks-'));
  fs.mkdirSync(path.join(dir, 'middleware'));
  fs.writeFileSync(path.join(dir, 'middleware', 'tprobe.lua'), PROBE);
  return dir;
}

function lines(proxy, word) {
  return proxy.stderr().split('\n').concat(proxy.stdout().split('\n')).filter((l) => l.includes(`probe ${word} `));
}

describe('cpx.timer', () => {
  let mock, dir, proxy;
  before(async () => {
    mock = await startCounter();
    dir = probeDir();
    proxy = await startProxy({ extra: { workers: 2, lua: { paths: [dir], middleware: [{ name: 'tprobe', mock: mock.url }] } } });
  });
  after(async () => { await proxy?.stop(); await mock?.close(); fs.rmSync(dir, { recursive: true, force: true }); });

  test('a timer runs with no request, with its arguments, and can fetch; every repeats; a failing task is logged', { timeout: 90000 }, async () => {
    assert.ok(await waitFor(() => lines(proxy, 'fetched').length === 2, 5000), proxy.stderr());
    const at = lines(proxy, 'at');
    assert.deepEqual(at.map((l) => l.replace(/.*probe /, '')).sort(),
      ['at w=0 g=1 premature=false args=x,42', 'at w=1 g=1 premature=false args=x,42']);
    for (const l of lines(proxy, 'fetched')) assert.match(l, /status=200 body=ok:\/task/);
    assert.equal(mock.st.task, 2);
    assert.ok(await waitFor(() => lines(proxy, 'every3').length === 2, 5000));
    assert.match(proxy.stderr() + proxy.stdout(), /task failed \(worker \d, generation 1\): .*probe boom\nstack traceback:/);
    assert.equal((await fetch(proxy.url + '/healthz')).status, 200);
    // sleep(0) yields a whole loop turn: the threadpool's answer arrives
    assert.ok(await waitFor(() => lines(proxy, 'spun').length === 2, 5000), proxy.stderr());
    for (const l of lines(proxy, 'spun')) assert.match(l, /tokens=[1-9]\d* turns>0=true/);
  });

  test('a reload fires the old generation\'s pending timers with premature and wakes its running tasks', { timeout: 90000 }, async () => {
    process.kill(proxy.pid, 'SIGHUP');
    assert.ok(await waitFor(() => lines(proxy, 'long').length === 2 && lines(proxy, 'at').length === 4, 5000), proxy.stderr());
    for (const l of lines(proxy, 'long')) assert.match(l, /g=1 premature=true sleep=generation retired/);
    const s = lines(proxy, 'sleeper');
    assert.equal(s.length, 2);
    for (const l of s) assert.match(l, /g=1 woke=generation retired/);
    assert.equal(lines(proxy, 'at').filter((l) => l.includes('g=2 premature=false')).length, 2);
  });

  test('SIGTERM ends pending and running tasks at once and the process exits', { timeout: 90000 }, async () => {
    const ex = await proxy.stop({ keepDir: true, timeoutMs: 8000 });
    assert.equal(ex.killed, undefined, 'exited without SIGKILL');
    assert.equal(ex.code, 0);
    const g2 = lines(proxy, 'long').filter((l) => l.includes('g=2'));
    assert.equal(g2.length, 2);
    for (const l of g2) assert.match(l, /premature=true sleep=server shutting down/);
    assert.equal(lines(proxy, 'sleeper').filter((l) => l.includes('g=2 woke=server shutting down')).length, 2);
  });
});

describe('cpx.lock', () => {
  test('across 2 workers and 2 processes: one holder at a time', { timeout: 90000 }, async () => {
    const mock = await startCounter();
    const dir = probeDir();
    const lockfile = path.join(dir, '.probe.lock');
    const mw = [{ name: 'tprobe', mode: 'lock', mock: mock.url, lockfile, rounds: 6 }];
    const a = await startProxy({ extra: { workers: 2, lua: { paths: [dir], middleware: mw } } });
    const b = await startProxy({ extra: { workers: 2, lua: { paths: [dir], middleware: mw } } });
    try {
      assert.ok(await waitFor(() => lines(a, 'lock-done').length === 2 && lines(b, 'lock-done').length === 2, 30000),
        a.stderr() + b.stderr());
      assert.equal(mock.st.enters, 24);
      assert.equal(mock.st.most, 1, 'never two holders inside at once');
      assert.equal(lines(a, 'lock-failed').length + lines(b, 'lock-failed').length, 0);
    } finally {
      await a.stop(); await b.stop(); await mock.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a lock is released when its request is aborted or its handler fails', { timeout: 90000 }, async () => {
    const mock = await startCounter();
    const dir = probeDir();
    const proxy = await startProxy({ extra: { lua: { paths: [dir], middleware: [{ name: 'tprobe', mock: mock.url, mode: 'none' }] } } });
    const post = (probe, signal) => fetch(proxy.url + '/v1/chat/completions', {
      method: 'POST', signal, headers: { 'content-type': 'application/json', 'x-probe': probe },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
    });
    try {
      const held = new Promise((r) => mock.st.holdWaiters.push(r));
      const ac = new AbortController();
      const hold = post('hold', ac.signal).catch((e) => e);
      await Promise.race([held, sleep(10000).then(() => { throw new Error('the hold request never took the lock\n' + proxy.stderr()); })]);
      ac.abort();
      await hold;
      let r = await post('take');
      let text = await r.text();
      assert.equal(r.status, 409, text + proxy.stderr());
      assert.match(text, /take: got it/);
      r = await post('fail');
      assert.equal(r.status, 500);
      await r.text();
      r = await post('take');
      assert.match(await r.text(), /take: got it/);
    } finally {
      await proxy.stop(); await mock.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
