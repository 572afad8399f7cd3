// bench/soak.mjs: a mixed load against the real binary for a given time,
// with the proxy's resident size and open descriptors sampled, and a verdict.
//
//   node bench/soak.mjs [--seconds N] [--conc N] [--bin PATH] [--rss-bound-mib N] [--fd-bound N]
//
// The load (each of `conc` loops picks one at random, forever): OpenAI chat
// stream and non-stream, Anthropic and Gemini clients translated to the
// OpenAI-compatible mock, Responses, count_tokens, upstream 500 and 429
// answers, upstream resets mid-stream, malformed JSON, unknown models, and
// clients that abort mid-stream. In the second half, a SIGHUP reload every
// 10 s, with the config file rewritten every other time. The first half has
// none: a reload replaces the worker's Lua VM and frees whatever it had
// leaked, so a soak that reloads all along cannot see a Lua heap leak.
//
// Verdict: after a warm-up (the first quarter), the resident size may grow
// by at most --rss-bound-mib (default 8) by the middle (before the first
// reload) and by the end, and the descriptors by at most --fd-bound
// (default 16) by the end; every answer must be well formed (an
// HTTP status and, for errors, a JSON error envelope or an SSE error event);
// the proxy must answer /healthz throughout and exit 0 on SIGTERM (under
// ASan with leak detection, a leak makes that exit non-zero). Exit status 0
// on success, 1 on a broken promise.
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';


const { values: opt } = parseArgs({ options: {
  seconds: { type: 'string', default: '60' },
  conc: { type: 'string', default: '16' },
  bin: { type: 'string' },
  'rss-bound-mib': { type: 'string', default: '8' },
  'fd-bound': { type: 'string', default: '16' },
} });
// proxy.mjs reads CPX_BIN when it is loaded: load it after setting it
if (opt.bin) process.env.CPX_BIN = opt.bin;
const { startMock } = await import('../spec/e2e/lib/mock_upstream.mjs');
const { startProxy, healthz, BIN } = await import('../spec/e2e/lib/proxy.mjs');
const seconds = Number(opt.seconds);
const conc = Number(opt.conc);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const mock = await startMock();
const entry = (alias) => ({ name: `m-${alias}`, baseUrl: `${mock.url}/v1`, keys: ['a', 'b'],
  models: [{ name: 'up', alias }] });
const proxy = await startProxy({
  openaiCompat: [entry('soak'), entry('soak-errors')],
  extra: { 'request-retry': 1, 'disable-cooling': true },
});
const log = (s) => process.stdout.write(`[soak ${(performance.now() / 1000).toFixed(0).padStart(4)}s] ${s}\n`);
log(`${BIN} pid ${proxy.pid} on ${proxy.url}, ${conc} loops for ${seconds} s`);

// The mock answers by the request: the model alias is not visible upstream
// (both are "up"), so the scenario rides in the user text.
mock.reply((req) => {
  const text = JSON.stringify(req.body || {});
  if (text.includes('[500]')) return { error: { status: 500, message: 'boom' } };
  if (text.includes('[429]')) return { error: { status: 429, message: 'slow down', headers: { 'retry-after': '1' } } };
  if (text.includes('[cut]')) return { text: 'partial answer that will be cut', chunks: 8, cutAfter: 3 };
  if (text.includes('[long]')) return { text: 'x'.repeat(2000), chunks: 40, eventDelayMs: 2 };
  return { text: 'soak reply with a few words in it', chunks: 4, usage: { input: 12, output: 7 } };
});

const chat = (content, extra = {}) => ({ model: 'soak', messages: [{ role: 'user', content }], ...extra });
const SCENARIOS = [
  { name: 'chat', path: '/v1/chat/completions', body: () => chat('hello') },
  { name: 'chat-stream', path: '/v1/chat/completions', body: () => chat('hello', { stream: true }) },
  { name: 'claude-stream', path: '/v1/messages',
    body: () => ({ model: 'soak', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'hi' }],
      tools: [{ name: 'get', description: 'd', input_schema: { type: 'object', properties: { a: { type: 'string' } } } }] }) },
  { name: 'claude', path: '/v1/messages', body: () => ({ model: 'soak', max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] }) },
  { name: 'gemini-stream', path: '/v1beta/models/soak:streamGenerateContent?alt=sse',
    body: () => ({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }) },
  { name: 'responses', path: '/v1/responses', body: () => ({ model: 'soak', input: 'hi' }) },
  { name: 'count', path: '/v1/messages/count_tokens',
    body: () => ({ model: 'soak', messages: [{ role: 'user', content: 'count these words please' }] }) },
  { name: 'upstream-500', path: '/v1/chat/completions', body: () => ({ ...chat('[500]'), model: 'soak-errors' }), error: true },
  { name: 'upstream-429', path: '/v1/messages',
    body: () => ({ model: 'soak-errors', max_tokens: 8, messages: [{ role: 'user', content: '[429]' }] }), error: true },
  { name: 'cut-stream', path: '/v1/chat/completions', body: () => chat('[cut]', { stream: true }), error: true },
  { name: 'bad-json', path: '/v1/chat/completions', raw: '{"model": "soak", "messages": [', error: true },
  { name: 'unknown-model', path: '/v1/messages', body: () => ({ model: 'nope', max_tokens: 8, messages: [] }), error: true },
  { name: 'abort-mid-stream', path: '/v1/chat/completions', body: () => chat('[long]', { stream: true }), abort: true },
];

const counts = Object.fromEntries(SCENARIOS.map((s) => [s.name, 0]));
const broken = [];
let total = 0;

function wellFormed(s, status, type, text) {
  if (!(status >= 200 && status < 600)) return `status ${status}`;
  if (status >= 400) {
    if (!/json/.test(type)) return `error without JSON (${status} ${type})`;
    const j = JSON.parse(text);
    if (!(j.error || j.type === 'error')) return `error body without an envelope: ${text.slice(0, 200)}`;
    return null;
  }
  if (/event-stream/.test(type) && s.error && !/error/.test(text)) return 'failed stream without an error event';
  if (/json/.test(type)) JSON.parse(text);
  return null;
}

async function one(s) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 30000);
  try {
    const r = await fetch(`${proxy.url}${s.path}`, { method: 'POST', signal: ac.signal,
      headers: { 'content-type': 'application/json' }, body: s.raw ?? JSON.stringify(s.body()) });
    if (s.abort) {
      const reader = r.body.getReader();
      await reader.read();
      ac.abort();
      return;
    }
    const text = await r.text();
    const why = wellFormed(s, r.status, r.headers.get('content-type') || '', text);
    if (why) broken.push(`${s.name}: ${why}`);
  } catch (e) {
    if (!s.abort) broken.push(`${s.name}: ${e.message}`);
  } finally {
    clearTimeout(timer);
    counts[s.name]++;
    total++;
  }
}

function sample() {
  let fds = null;
  try { fds = fs.readdirSync(`/proc/${proxy.pid}/fd`).length; } catch {}
  return { t: performance.now() / 1000, rss: proxy.rssKiB(), fds };
}

const t0 = performance.now();
const endAt = t0 + seconds * 1000;
const samples = [];
let stop = false;

const loops = Array.from({ length: conc }, async () => {
  while (!stop && performance.now() < endAt) {
    await one(SCENARIOS[Math.floor(Math.random() * SCENARIOS.length)]);
  }
});

const ticker = (async () => {
  let k = 0;
  while (performance.now() < endAt) {
    await sleep(Math.min(5000, Math.max(0, endAt - performance.now())));
    k++;
    const s = sample();
    samples.push(s);
    const h = await healthz(proxy.url, 3000);
    if (h.status !== 200) broken.push(`healthz answered ${h.status} at ${s.t.toFixed(0)} s`);
    if (k % 2 === 0 && s.t - t0 / 1000 >= seconds / 2) {
      if (k % 4 === 0) fs.appendFileSync(proxy.configPath, `\n# soak edit ${k}\n`);
      process.kill(proxy.pid, 'SIGHUP');
    }
    log(`requests ${total}  rss ${(s.rss / 1024).toFixed(1)} MiB  fds ${s.fds}`);
  }
})();

await ticker;
stop = true;
await Promise.all(loops);
const last = sample();
samples.push(last);
const ex = await proxy.stop({ timeoutMs: 20000 });
await mock.close();

const warm = samples.filter((s) => s.t - t0 / 1000 >= seconds / 4)[0] || samples[0];
const mid = samples.filter((s) => s.t - t0 / 1000 < seconds / 2 + 5).pop() || warm;
const grewKiB = last.rss - warm.rss;
const grewMidKiB = mid.rss - warm.rss;
const grewFds = last.fds - warm.fds;
const rssBound = Number(opt['rss-bound-mib']) * 1024;
const fdBound = Number(opt['fd-bound']);
log(`done: ${total} requests (${(total / seconds).toFixed(0)}/s); by scenario: ${JSON.stringify(counts)}`);
log(`rss after warm-up ${(warm.rss / 1024).toFixed(1)} MiB -> end ${(last.rss / 1024).toFixed(1)} MiB `
  + `(+${(grewKiB / 1024).toFixed(1)}, bound ${opt['rss-bound-mib']}), at the middle before any reload `
  + `${(mid.rss / 1024).toFixed(1)} MiB (+${(grewMidKiB / 1024).toFixed(1)}); fds ${warm.fds} -> ${last.fds} (bound +${fdBound}); `
  + `exit ${ex.code}${ex.signal ? ` signal ${ex.signal}` : ''}`);
if (grewKiB > rssBound) broken.push(`RSS grew by ${(grewKiB / 1024).toFixed(1)} MiB after warm-up`);
if (grewMidKiB > rssBound) broken.push(`RSS grew by ${(grewMidKiB / 1024).toFixed(1)} MiB from warm-up to the middle (no reload yet)`);
if (grewFds > fdBound) broken.push(`descriptors grew by ${grewFds}`);
if (ex.code !== 0) broken.push(`exit code ${ex.code} signal ${ex.signal}\n${proxy.stderr().slice(-3000)}`);
if (broken.length) {
  const uniq = [...new Set(broken)];
  log(`FAILED: ${broken.length} broken promises, first ones:\n  ${uniq.slice(0, 10).join('\n  ')}`);
  process.exit(1);
}
log('ok');
