// Raw HTTP/1.1 over a TCP socket, for the inputs the SDKs cannot produce
// (oversized headers, clients that stop reading, pipelines on one connection).

import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';

// Parses one response from the start of buf. Returns { status, reason, headers,
// body, length } (length = bytes consumed) or null when it is incomplete.
// headOnly: the response to a HEAD request has no body.
export function parseResponse(buf, { headOnly = false, eof = false } = {}) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const head = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = head[0].match(/^HTTP\/1\.[01] (\d{3}) ?(.*)$/);
  if (!m) throw new Error(`bad status line: ${JSON.stringify(head[0])}`);
  const headers = {};
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    const k = line.slice(0, i).trim().toLowerCase();
    const v = line.slice(i + 1).trim();
    headers[k] = headers[k] !== undefined ? `${headers[k]}, ${v}` : v;
  }
  const status = Number(m[1]);
  let pos = end + 4;
  const res = (body, length) => ({ status, reason: m[2], headers, body, length });
  if (headOnly || status === 204 || status === 304 || (status >= 100 && status < 200)) return res(Buffer.alloc(0), pos);
  if (/chunked/i.test(headers['transfer-encoding'] || '')) {
    const parts = [];
    for (;;) {
      const le = buf.indexOf('\r\n', pos);
      if (le < 0) return null;
      const size = parseInt(buf.subarray(pos, le).toString('latin1'), 16);
      if (Number.isNaN(size)) throw new Error('bad chunk size');
      if (size === 0) {
        const te = buf.indexOf('\r\n\r\n', le);
        if (te < 0) return null;
        return res(Buffer.concat(parts), te + 4);
      }
      if (buf.length < le + 2 + size + 2) return null;
      parts.push(buf.subarray(le + 2, le + 2 + size));
      pos = le + 2 + size + 2;
    }
  }
  if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    if (buf.length < pos + n) return null;
    return res(buf.subarray(pos, pos + n), pos + n);
  }
  return eof ? res(buf.subarray(pos), buf.length) : null; // body until close
}

// A connection that collects what the server sends and can wait for the next
// complete response.
export async function connect(port, host = '127.0.0.1') {
  const sock = net.connect(port, host);
  sock.setNoDelay(true);
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  const c = {
    sock,
    buf: Buffer.alloc(0),
    closed: false,
    error: null,
    write(s) { if (!sock.destroyed) sock.write(s); },
    // Waits for one complete response (or the close of the connection) and
    // removes it from the buffer.
    async next({ timeoutMs = 5000, headOnly = false } = {}) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const r = parseResponse(c.buf, { headOnly, eof: c.closed });
        if (r) {
          c.buf = c.buf.subarray(r.length);
          r.text = r.body.toString('utf8');
          return r;
        }
        if (c.closed) return { status: 0, closed: true, error: c.error, raw: c.buf.toString('latin1') };
        if (Date.now() > end) throw new Error(`no complete response within ${timeoutMs} ms; received ${c.buf.length} bytes: ${JSON.stringify(c.buf.subarray(0, 300).toString('latin1'))}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    close() { sock.destroy(); },
  };
  sock.on('data', (d) => { c.buf = Buffer.concat([c.buf, d]); });
  sock.on('error', (e) => { c.error = e; });
  sock.on('close', () => { c.closed = true; });
  return c;
}

// One request on a fresh connection; resolves with the first response.
export async function rawRequest(port, data, opts = {}) {
  const c = await connect(port);
  c.write(data);
  try {
    return await c.next(opts);
  } finally {
    c.close();
  }
}

export function chatRequest({ body, key, path = '/v1/chat/completions', extraHeaders = '' }) {
  const b = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
    (key ? `Authorization: Bearer ${key}\r\n` : '') + extraHeaders +
    `Content-Length: ${b.length}\r\n\r\n${b.toString('utf8')}`;
}

// Writes all of `bytes` at once on a new connection without waiting for an
// answer (as curl sends a body), then collects what comes back until the
// connection closes. secure: over TLS (any certificate); localAddress: the
// client's source address. Resolves { data, error } (error: a reset's code,
// 'timeout' or null).
export function eager(port, bytes, { ms = 20000, localAddress, secure = false } = {}) {
  return new Promise((resolve) => {
    const opts = { port, host: '127.0.0.1', localAddress };
    const s = secure ? tls.connect({ ...opts, rejectUnauthorized: false, servername: 'localhost' }) : net.connect(opts);
    const chunks = [];
    let error = null;
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      s.destroy();
      resolve({ data: Buffer.concat(chunks), error });
    };
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e) => { error = e.code || String(e); done(); });
    s.on('close', done);
    s.setTimeout(ms, () => { error = 'timeout'; done(); });
    s.once(secure ? 'secureConnect' : 'connect', () => s.write(bytes, () => s.end()));
  });
}

// Asserts that an eager() exchange read a complete error answer with this
// status and Connection: close, no reset. Returns the parsed JSON body.
export function assertAnswer({ data, error }, status, what) {
  assert.equal(error, null, `${what}: no reset (${error}) after ${data.length} bytes`);
  const r = parseResponse(data, { eof: true });
  assert.ok(r, `${what}: a complete answer, got ${JSON.stringify(data.toString('latin1').slice(0, 200))}`);
  assert.equal(r.status, status, what);
  assert.equal(r.headers.connection, 'close', what);
  const body = JSON.parse(r.body.toString());
  assert.equal(typeof body.error.message, 'string', what);
  return body;
}
