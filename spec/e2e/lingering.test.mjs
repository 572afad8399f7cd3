// Issue 15: lingering close and limits.max-connections.
// A client that sends its whole request at once (as curl does) reads the
// complete error answer (413, 431, 400) instead of a connection reset; the
// bytes it sends after the answer are discarded, not buffered (RSS stays
// flat); a client that keeps sending is cut after the lingering limits; the
// connection past limits.max-connections gets a 503 and a close.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { startProxy } from './lib/proxy.mjs';
import { assertAnswer, connect, eager, parseResponse } from './lib/raw_http.mjs';

const LINGER_TIMEOUT_S = 0.5;
const LINGER_TIME_S = 3;

// proxy keeps the default lingering limits (30 s, 5 s between reads): the
// eager clients below are not what is timed, and a client process starved of
// CPU for half a second on a loaded machine must not turn a 413 into a reset.
// timed has short limits for the test that measures them.
let proxy, timed, capped, noLinger;
before(async () => {
  proxy = await startProxy();
  timed = await startProxy({
    extra: { limits: { 'lingering-timeout-seconds': LINGER_TIMEOUT_S, 'lingering-time-seconds': LINGER_TIME_S } },
  });
  capped = await startProxy({ extra: { limits: { 'max-connections': 4 } } });
  noLinger = await startProxy({ extra: { limits: { 'lingering-time-seconds': 0 } } });
});
after(async () => {
  const a = await proxy?.stop();
  const t = await timed?.stop();
  assert.equal(t?.signal ?? null, null, 'the server was not killed by a signal');
  const b = await capped?.stop();
  const c = await noLinger?.stop();
  assert.equal(c?.signal ?? null, null, 'the server was not killed by a signal');
  assert.equal(a?.signal ?? null, null, 'the server was not killed by a signal');
  assert.equal(b?.signal ?? null, null, 'the server was not killed by a signal');
});

const MB = 1024 * 1024;
const big = Buffer.alloc(42 * MB, 'x');

test('42 MB body sent eagerly: a complete 413 every time, no reset', { timeout: 120000 }, async () => {
  const head = Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${big.length}\r\n\r\n`);
  const req = Buffer.concat([head, big]);
  for (let i = 0; i < 10; i++) assertAnswer(await eager(proxy.port, req), 413, `413 #${i}`);
});

test('oversized header and malformed request line, then a garbage body: 431 and 400, no reset', { timeout: 120000 }, async () => {
  const garbage = big.subarray(0, 8 * MB);
  const h431 = Buffer.concat([Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100 * 1024)}\r\nContent-Length: ${garbage.length}\r\n\r\n`), garbage]);
  const h400 = Buffer.concat([Buffer.from('GARBAGE\x01 \x02 HTTP/9.x\r\n\r\n'), garbage]);
  for (let i = 0; i < 10; i++) {
    assertAnswer(await eager(proxy.port, h431), 431, `431 #${i}`);
    assertAnswer(await eager(proxy.port, h400), 400, `400 #${i}`);
  }
});

test('discarded bytes are not buffered: RSS flat after 336 MB sent to 413s, 4 at a time', { timeout: 120000 }, async () => {
  const head = Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${big.length}\r\n\r\n`);
  const req = Buffer.concat([head, big]);
  await eager(proxy.port, req); // warm up the allocator and slabs
  const before = proxy.rssKiB();
  for (let round = 0; round < 2; round++) {
    const rs = await Promise.all([0, 1, 2, 3].map(() => eager(proxy.port, req)));
    rs.forEach((r, i) => assertAnswer(r, 413, `round ${round} conn ${i}`));
  }
  const grown = proxy.rssKiB() - before;
  assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB (before ${before} KiB)`);
});

// Sends a header announcing a body over the limit, then keeps sending (every
// `everyMs`), or sends 1 KiB once and then probe bytes from `probeMs` after the
// answer (a server that already closed answers it with a reset; a closed
// socket whose FIN was already sent says nothing before that). Resolves
// { status, afterAnswerMs } where afterAnswerMs is the time from the answer
// to the moment the client saw the cut.
function drip(port, everyMs, probeMs = 0) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let buf = Buffer.alloc(0);
    let answeredAt = 0;
    let status = 0;
    let timer;
    const finish = () => {
      clearInterval(timer);
      s.destroy();
      if (!answeredAt) reject(new Error('closed before an answer'));
      else resolve({ status, afterAnswerMs: performance.now() - answeredAt });
    };
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parseResponse(buf, { eof: false });
      if (r && !answeredAt) {
        answeredAt = performance.now();
        status = r.status;
        // The first probe draws the reset, the next one reports it.
        if (probeMs) setTimeout(() => { timer = setInterval(() => { if (!s.destroyed) s.write('z', () => {}); }, 50); }, probeMs);
      }
    });
    s.on('error', finish);
    s.on('close', finish);
    s.setTimeout(20000, finish);
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${100 * MB}\r\n\r\n`);
    const chunk = Buffer.alloc(1024, 'y');
    if (everyMs) timer = setInterval(() => { if (!s.destroyed) s.write(chunk, () => {}); }, everyMs);
    else s.write(chunk);
  });
}

test('a client that keeps sending after the 413 is cut at lingering-time; a silent one at lingering-timeout', { timeout: 60000 }, async () => {
  const dripping = await drip(timed.port, 100);
  assert.equal(dripping.status, 413);
  assert.ok(dripping.afterAnswerMs > LINGER_TIME_S * 1000 - 300 && dripping.afterAnswerMs < LINGER_TIME_S * 1000 + 1500,
    `dripping client cut after ${dripping.afterAnswerMs.toFixed(0)} ms (lingering-time ${LINGER_TIME_S} s)`);
  // Silent after one write: closed at lingering-timeout (0.5 s), so the probe at
  // 1.2 s (well before lingering-time, 3 s) already meets a closed socket.
  const probeMs = 1200;
  const silent = await drip(timed.port, 0, probeMs);
  assert.equal(silent.status, 413);
  assert.ok(silent.afterAnswerMs >= probeMs && silent.afterAnswerMs < probeMs + 500,
    `silent client: the probe at ${probeMs} ms met a closed socket (seen after ${silent.afterAnswerMs.toFixed(0)} ms)`);
});

test('lingering-time 0: the error answer is still written before the close', { timeout: 30000 }, async () => {
  for (let i = 0; i < 5; i++) assertAnswer(await eager(noLinger.port, Buffer.from('GARBAGE\x01 \x02 HTTP/9.x\r\n\r\n')), 400, `400 #${i}`);
});

async function healthzOn(c) {
  c.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  const r = await c.next({ timeoutMs: 3000 });
  assert.equal(r.status, 200);
}

test('max-connections 4: the 5th connection gets 503 and a close; after one closes, a new one is served', { timeout: 30000 }, async () => {
  const open = [];
  for (let i = 0; i < 4; i++) {
    const c = await connect(capped.port);
    await healthzOn(c); // accepted and counted, now idle keep-alive
    open.push(c);
  }
  const fifth = await eager(capped.port, Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'), { ms: 5000 });
  const body = assertAnswer(fifth, 503, '5th connection');
  assert.match(body.error.message, /too many connections/);
  assert.equal(body.error.type, 'server_error');
  // A burst of refusals is logged at most once a second, with a count.
  const before = (capped.stderr().match(/too many connections/g) || []).length;
  for (let i = 0; i < 20; i++) assertAnswer(await eager(capped.port, Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'), { ms: 5000 }), 503, `burst #${i}`);
  await new Promise((res) => setTimeout(res, 300)); // the log is flushed every 100 ms
  const lines = (capped.stderr().match(/too many connections/g) || []).length - before;
  assert.ok(lines <= 2, `${lines} log lines for 20 refusals`);
  assert.match(capped.stderr(), /rejected: too many connections \(limit 4; \d+ refused since the last such line\)/);

  for (const c of open) await healthzOn(c); // the 4 are still served
  open[0].sock.destroy();
  // The close reaches the server asynchronously; the next connection within a second is served.
  let served = null;
  const deadline = performance.now() + 2000;
  while (!served && performance.now() < deadline) {
    const r = await eager(capped.port, Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), { ms: 3000 });
    const p = parseResponse(r.data, { eof: true });
    if (p?.status === 200) served = p;
    else await new Promise((res) => setTimeout(res, 50));
  }
  assert.ok(served, 'a new connection is served after one of the 4 closed');
  for (const c of open.slice(1)) c.sock.destroy();
});
