// Helpers of the management e2e tests: one management call, and the mock
// servers' side: a server that hands its handler the whole body, a JSON
// answer.

import http from 'node:http';

// One call to /v0/management<p> with the key in X-Management-Key (none when
// key is null). Resolves { status, json (null when not JSON), text, headers }.
export async function mgmtCall(baseUrl, p, { method = 'GET', body, key } = {}) {
  const r = await fetch(`${baseUrl}/v0/management${p}`, {
    method,
    headers: key ? { 'X-Management-Key': key } : {},
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text, headers: r.headers };
}

// A JSON answer with its length, from a node:http handler.
export function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// A node:http server whose handler gets the request body read whole (as
// text): handler(req, res, raw). Listen and close it as any http.Server.
export function bodyServer(handler) {
  return http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => { raw += c; });
    req.on('end', () => handler(req, res, raw));
  });
}
