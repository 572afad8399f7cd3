// Throwaway TLS material for tests, made at run time with the openssl CLI
// (no key is committed): a CA, a server certificate it signed for localhost
// and 127.0.0.1, and a self-signed certificate for the same names that no
// CA vouches for. Files live in a fresh temporary directory; remove() deletes
// it.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { execFileSync } from 'node:child_process';

const SAN = 'subjectAltName=DNS:localhost,IP:127.0.0.1';

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makeCerts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-tls-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=cpx e2e CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  openssl(['req', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=localhost'], dir);
  fs.writeFileSync(path.join(dir, 'leaf.ext'), `${SAN}\nbasicConstraints=CA:FALSE\n`);
  openssl(['x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'leaf.pem', '-days', '2', '-extfile', 'leaf.ext'], dir);
  openssl(['req', '-x509', ...ec, '-keyout', 'rogue.key', '-out', 'rogue.pem', '-days', '2', '-subj', '/CN=localhost',
    '-addext', SAN], dir);
  const read = (f) => fs.readFileSync(path.join(dir, f));
  return {
    dir,
    caFile: path.join(dir, 'ca.pem'),
    leaf: { key: read('leaf.key'), cert: read('leaf.pem') },
    rogue: { key: read('rogue.key'), cert: read('rogue.pem') },
    remove() { fs.rmSync(dir, { recursive: true, force: true }); },
  };
}

// A self-signed certificate for CN (default localhost) in dir: the paths
// { cert, key } of dir/<name>cert.pem and dir/<name>key.pem (key 0600), for
// a proxy's own `tls:` block.
export function selfSigned(dir, { name = '', cn = 'localhost' } = {}) {
  const cert = path.join(dir, `${name}cert.pem`);
  const key = path.join(dir, `${name}key.pem`);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${cn}`]);
  fs.chmodSync(key, 0o600);
  return { cert, key };
}

// An https upstream on a free loopback port. handler(req, res, rec) answers;
// s.tlsConns counts completed handshakes (s.resumed those that resumed a
// session), s.requests records { conn, key, model, body, raw }.
// keepAliveTimeout: how long the server keeps an idle connection (ms).
export async function startHttpsServer({ key, cert }, handler, { keepAliveTimeout = 65000 } = {}) {
  const srv = https.createServer({ key, cert, requestTimeout: 0, keepAliveTimeout });
  const s = { tlsConns: 0, resumed: 0, requests: [], sockets: new Set(), handshakeErrors: 0 };
  srv.on('secureConnection', (sock) => {
    s.tlsConns++;
    if (sock.isSessionReused()) s.resumed++;
    sock._cid = s.tlsConns;
    s.sockets.add(sock);
    sock.on('close', () => s.sockets.delete(sock));
  });
  srv.on('tlsClientError', () => { s.handshakeErrors++; });
  srv.on('request', async (req, res) => {
    const chunks = [];
    for await (const ch of req) chunks.push(ch);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body = null;
    try { body = JSON.parse(raw); } catch {}
    const rec = { conn: req.socket._cid, key: (req.headers.authorization || '').replace(/^Bearer /, ''),
      model: body?.model, body, raw, headers: req.headers };
    s.requests.push(rec);
    try { await handler(req, res, rec); } catch (e) { rec.error = String(e); res.destroy(); }
  });
  await new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(0, '127.0.0.1', resolve); });
  s.port = srv.address().port;
  s.url = `https://127.0.0.1:${s.port}`;
  s.close = async () => {
    for (const sock of s.sockets) sock.destroy();
    await new Promise((r) => srv.close(r));
  };
  return s;
}
