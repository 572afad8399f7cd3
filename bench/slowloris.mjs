// Slowloris: does a crowd of connections that send their headers one byte at
// a time delay a normal client? Measures a normal request's latency (GET
// /healthz and a small POST /v1/chat/completions to a local upstream, each on
// a new connection, as curl does) with no crowd, then with N slow connections
// open, in the same run, and prints the added p50/p99 and their ratio.
// Also reports how many slow connections the header timeout cut.
//
//   node bench/slowloris.mjs                 # N=1000, 300 requests per phase
//   N=2000 REQS=500 HEADER_TIMEOUT=5 node bench/slowloris.mjs
//
// Loopback only; every socket and process it opens is closed on exit.
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { startProxy } = await import(path.join(here, '../spec/e2e/lib/proxy.mjs'));

const N = Number(process.env.N || 1000);
const REQS = Number(process.env.REQS || 300);
const HEADER_TIMEOUT = Number(process.env.HEADER_TIMEOUT || 10);
const DRIP_MS = Number(process.env.DRIP_MS || 500);

const upstream = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const body = JSON.stringify({ id: 'x', object: 'chat.completion', created: 0, model: 'm',
      choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }] });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
const upUrl = `http://127.0.0.1:${upstream.address().port}`;

const proxy = await startProxy({
  openaiCompat: [{ name: 'up', baseUrl: `${upUrl}/v1`, keys: ['k'], models: ['m'] }],
  extra: { limits: { 'header-timeout-seconds': HEADER_TIMEOUT, 'max-connections': N + 1000 } },
});
const port = proxy.port;

// One request on a fresh connection; resolves its latency in ms.
function once(kind) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const body = kind === 'chat' ? JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }) : null;
    const req = http.request({ host: '127.0.0.1', port, method: body ? 'POST' : 'GET',
      path: body ? '/v1/chat/completions' : '/healthz', agent: false,
      headers: body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {} }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

async function phase(label) {
  const out = {};
  for (const kind of ['healthz', 'chat']) {
    const lat = [];
    for (let i = 0; i < REQS; i++) lat.push(await once(kind));
    out[kind] = { p50: pct(lat, 50), p99: pct(lat, 99) };
  }
  console.log(`${label.padEnd(22)} healthz p50 ${out.healthz.p50.toFixed(2)} ms p99 ${out.healthz.p99.toFixed(2)} ms | `
    + `chat p50 ${out.chat.p50.toFixed(2)} ms p99 ${out.chat.p99.toFixed(2)} ms`);
  return out;
}

// The crowd: each connection sends "GET / HTTP/1.1\r\nX-a: " then one byte
// every DRIP_MS, never finishing its headers.
const slow = [];
let cut = 0;
let openErrors = 0;
function startCrowd() {
  return new Promise((resolve) => {
    let pending = N;
    for (let i = 0; i < N; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('connect', () => {
        s.write('GET / HTTP/1.1\r\nHost: x\r\nX-slow: ');
        s.timer = setInterval(() => { if (!s.destroyed) s.write('a'); }, DRIP_MS);
        if (--pending === 0) resolve();
      });
      s.on('data', () => {});
      s.on('close', () => { clearInterval(s.timer); cut++; });
      s.on('error', () => { openErrors++; if (--pending === 0) resolve(); });
      slow.push(s);
    }
  });
}

let code = 0;
try {
  console.log(`cliproxy ${proxy.url}: ${N} slowloris connections, ${REQS} requests per kind and phase, header-timeout ${HEADER_TIMEOUT} s`);
  await phase('warm-up');
  const base = await phase('no crowd');
  await startCrowd();
  await new Promise((r) => setTimeout(r, 500));
  console.log(`crowd open: ${N - openErrors} connections (${openErrors} failed to open), RSS ${proxy.rssKiB()} KiB`);
  const loaded = await phase(`with ${N} slow`);
  for (const kind of ['healthz', 'chat']) {
    const d50 = loaded[kind].p50 - base[kind].p50;
    const d99 = loaded[kind].p99 - base[kind].p99;
    console.log(`${kind}: added p50 ${d50.toFixed(2)} ms, added p99 ${d99.toFixed(2)} ms `
      + `(p99 ratio ${(loaded[kind].p99 / base[kind].p99).toFixed(2)}x; issue 15 target: added p99 <= 50 ms)`);
  }
  const waitS = HEADER_TIMEOUT + 2;
  console.log(`waiting ${waitS} s for the header timeout to cut the crowd...`);
  await new Promise((r) => setTimeout(r, waitS * 1000));
  console.log(`header timeout cut ${cut} of ${N - openErrors} slow connections`);
  if (cut < N - openErrors) code = 1;
} catch (e) {
  console.error(`slowloris bench failed: ${e.message}`);
  code = 2;
} finally {
  for (const s of slow) { clearInterval(s.timer); s.destroy(); }
  await proxy.stop();
  upstream.close();
}
process.exit(code);
