// Issue 15: limits.max-connections-per-ip, and lingering close over TLS.
// - Connections from one address beyond max-connections-per-ip get a 503
//   and a close while another address is still served; a freed slot is
//   reused. The clients bind 127.0.0.3 and 127.0.0.2 (loopback aliases on
//   Linux), so the harness's own connections from 127.0.0.1 do not count.
// - Over TLS, a 42 MB body sent eagerly gets a complete 413 (no reset) and
//   a client that keeps sending is cut after the lingering limits.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';

import { startProxy, buildConfig, freePort, BIN, SCRATCH } from './lib/proxy.mjs';
import { selfSigned } from './lib/tls.mjs';
import { assertAnswer, eager, parseResponse } from './lib/raw_http.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const PER_IP = 3;

let capped;
before(async () => {
  capped = await startProxy({ extra: { limits: { 'max-connections-per-ip': PER_IP } } });
});
after(async () => {
  const r = await capped?.stop();
  assert.equal(r?.signal ?? null, null, 'the server was not killed by a signal');
});

// A keep-alive connection from localAddress that answers one /healthz.
function keepAlive(port, localAddress) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1', localAddress });
    let buf = Buffer.alloc(0);
    let waiter = null;
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parseResponse(buf);
      if (r && waiter) { buf = Buffer.alloc(0); const w = waiter; waiter = null; w(r); }
    });
    sock.on('close', () => { if (waiter) { const w = waiter; waiter = null; w(parseResponse(buf, { eof: true })); } });
    sock.once('error', reject);
    sock.once('connect', () => resolve({
      sock,
      healthz() {
        return new Promise((res) => { waiter = res; sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'); });
      },
    }));
  });
}

const HEALTHZ = Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');

test(`max-connections-per-ip ${PER_IP}: the next connection from 127.0.0.3 gets 503, 127.0.0.2 is still served`, { timeout: 30000 }, async () => {
  const open = [];
  for (let i = 0; i < PER_IP; i++) {
    const c = await keepAlive(capped.port, '127.0.0.3');
    assert.equal((await c.healthz()).status, 200);
    open.push(c);
  }
  for (let i = 0; i < 5; i++) {
    const body = assertAnswer(await eager(capped.port, HEALTHZ, { localAddress: '127.0.0.3', ms: 5000 }), 503, `127.0.0.3 #${i}`);
    assert.equal(body.error.message, 'too many connections from this address');
    assert.equal(body.error.type, 'server_error');
  }
  // Another address is counted on its own: PER_IP at once are served.
  const other = [];
  for (let i = 0; i < PER_IP; i++) {
    const c = await keepAlive(capped.port, '127.0.0.2');
    assert.equal((await c.healthz()).status, 200, `127.0.0.2 #${i}`);
    other.push(c);
  }
  assertAnswer(await eager(capped.port, HEALTHZ, { localAddress: '127.0.0.2', ms: 5000 }), 503, '127.0.0.2 over its limit');
  for (const c of open) assert.equal((await c.healthz()).status, 200, 'the first ones are still served');
  await sleep(300); // the log is flushed every 100 ms
  assert.match(capped.stderr(), /rejected: too many connections from this address \(limit 3;/);

  // A freed slot is reused once the server has seen the close (and the
  // refused connections' lingering ended: they count while they linger).
  open[0].sock.destroy();
  let served = false;
  const deadline = performance.now() + 5000;
  while (!served && performance.now() < deadline) {
    const r = parseResponse((await eager(capped.port, HEALTHZ, { localAddress: '127.0.0.3', ms: 3000 })).data, { eof: true });
    if (r?.status === 200) served = true;
    else await sleep(50);
  }
  assert.ok(served, 'a new connection from 127.0.0.3 is served after one of its 3 closed');
  for (const c of [...open, ...other]) c.sock.destroy();
});

test('TLS: 42 MB sent eagerly gets a complete 413 every time; a client that keeps sending is cut by the lingering limits', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-tls-linger-'));
  const { cert, key } = selfSigned(dir);
  const port = await freePort();
  const cfgPath = path.join(dir, 'config.yaml');
  fs.writeFileSync(cfgPath, buildConfig({ port, authDir: dir,
    extra: { tls: { enable: true, cert, key }, limits: { 'lingering-time-seconds': 3, 'lingering-timeout-seconds': 2 } } }));
  const child = spawn(BIN, ['--config', cfgPath], { cwd: SCRATCH, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  let exit = null;
  child.on('exit', (code, signal) => { exit = { code, signal }; });
  try {
    let up = false;
    for (let i = 0; i < 200 && !up; i++) {
      const r = await eager(port, HEALTHZ, { secure: true, ms: 2000 });
      up = parseResponse(r.data, { eof: true })?.status === 200;
      if (!up) await sleep(50);
    }
    assert.ok(up, `the TLS server answers: ${err}`);
    const big = Buffer.alloc(42 * 1024 * 1024, 'x');
    const req = Buffer.concat([Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${big.length}\r\n\r\n`), big]);
    for (let i = 0; i < 5; i++) {
      const body = assertAnswer(await eager(port, req, { secure: true }), 413, `TLS 413 #${i}`);
      assert.equal(typeof body.error.message, 'string');
    }
    // A client that never stops sending, and keeps sending after the server's
    // FIN (allowHalfOpen): the server cuts it after lingering-max-bytes (64
    // MiB) or lingering-time (3 s). It writes 64 KiB per timer
    // tick and so reads between writes: a Node TLS client that writes in a
    // tight loop reads nothing until its writes stop (seen: 0 bytes read
    // after 64 MB sent), which would test Node, not the server.
    const r = await new Promise((resolve) => {
      const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, servername: 'localhost', allowHalfOpen: true });
      const chunks = [];
      let closed = false;
      let answeredAt = 0;
      let finAt = 0;
      let sent = 0;
      const chunk = Buffer.alloc(64 * 1024, 'y');
      let timer = null;
      const finish = (cut) => {
        if (closed) return;
        closed = true;
        clearInterval(timer);
        s.destroy();
        resolve({ data: Buffer.concat(chunks), cut, sent, answeredAt, finAt, closedAt: performance.now() });
      };
      s.on('data', (d) => {
        chunks.push(d);
        if (!answeredAt && parseResponse(Buffer.concat(chunks), { eof: false })) answeredAt = performance.now();
      });
      s.on('end', () => { finAt = performance.now(); });
      s.on('error', () => finish(true));
      s.on('close', () => finish(true));
      setTimeout(() => finish(false), 20000);
      s.once('secureConnect', () => {
        s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n');
        timer = setInterval(() => { if (!closed && s.writableLength < 1024 * 1024) { sent += chunk.length; s.write(chunk); } }, 1);
      });
    });
    const what = `got ${JSON.stringify(r.data.toString('latin1').slice(0, 120))}; sent ${(r.sent / 1048576).toFixed(1)} MiB; answer ${r.answeredAt ? 'read' : 'not read'}; cut ${r.answeredAt ? (r.closedAt - r.answeredAt).toFixed(0) : '?'} ms after it`;
    assert.ok(r.cut, `the server cut the connection of a client that kept sending (${what})`);
    assert.equal(parseResponse(r.data, { eof: true })?.status, 413, `and that client read its 413 first (${what})`);
    assert.ok(r.finAt >= r.answeredAt, `the server's FIN came after its answer (${what})`);
    assert.ok(r.closedAt - r.answeredAt < 3000 + 2000, `cut within lingering-time of the answer (${what})`);
    assert.equal(exit, null, `the server is still running: ${err}`);
  } finally {
    child.kill('SIGTERM');
    if (!exit) await new Promise((res) => child.on('exit', res));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(exit.signal, null, 'not killed by a signal');
});
