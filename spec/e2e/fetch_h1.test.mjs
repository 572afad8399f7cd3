// The translated path's upstream client: cpx.fetch on the worker's pooled
// HTTP/1.1 client (cpx_h1). An Anthropic client's /v1/messages is translated
// to Chat Completions for an openai-compatibility account, so every request
// below goes through Lua and cpx.fetch, never through the C relay.
//
//   plain   the mock upstream over http: one connection for many requests
//   tls     an https upstream with a certificate from a test CA named by
//           upstream-ca-file: one TLS handshake for many requests
//   proxied the same mock behind a proxy-url that refuses connections: the
//           request goes to libcurl, which honours the proxy (and fails),
//           and nothing reaches the upstream directly

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startProxy } from './lib/proxy.mjs';
import { startMock } from './lib/mock_upstream.mjs';
import { makeCerts, startHttpsServer } from './lib/tls.mjs';
import { sleep } from './lib/wait.mjs';

const T = (ms = 30000) => ({ timeout: ms });
const CHAT = JSON.stringify({
  id: 'chatcmpl-h1', object: 'chat.completion', created: 1700000000, model: 'up-tls',
  choices: [{ index: 0, message: { role: 'assistant', content: 'over tls' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
});
const chunk = (delta, finish = null) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-h1', object: 'chat.completion.chunk', created: 1700000000, model: 'up-tls', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const STREAM = [chunk({ role: 'assistant', content: 'over ' }), chunk({ content: 'tls' }), chunk({}, 'stop'), 'data: [DONE]\n\n'];

// A stream whose events all come in one write: the translator gets them in
// one call (handler.on_events) and the client the same bytes as one by one.
const WORDS = Array.from({ length: 300 }, (_, i) => `w${i} `);
const BURST = [chunk({ role: 'assistant', content: '' }), ...WORDS.map((w) => chunk({ content: w })),
  chunk({}, 'stop'), 'data: [DONE]\n\n'].join('');

let mock, certs, tls, proxy, proxied, deadPort;

async function tlsHandler(req, res, rec) {
  if (rec.body?.stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const piece of STREAM) {
      res.write(piece);
      await sleep(1);
    }
    res.end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(CHAT) });
  res.end(CHAT);
}

before(async () => {
  mock = await startMock();
  mock.reply((req) => (req.model === 'up-burst' ? { raw: { status: 200,
    headers: { 'content-type': 'text/event-stream' }, body: BURST } } : { text: 'over http', chunks: 3 }));
  certs = makeCerts();
  tls = await startHttpsServer(certs.leaf, tlsHandler);
  // A port nobody listens on, as the proxy of the third proxy.
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  deadPort = s.address().port;
  await new Promise((r) => s.close(r));
  const accounts = [
    { name: 'plain', baseUrl: `${mock.url}/v1`, keys: ['k-plain'], models: [{ name: 'up-plain', alias: 'tr-plain' },
      { name: 'up-burst', alias: 'tr-burst' }] },
    { name: 'tls', baseUrl: `https://localhost:${tls.port}/v1`, keys: ['k-tls'], models: [{ name: 'up-tls', alias: 'tr-tls' }] },
  ];
  proxy = await startProxy({ openaiCompat: accounts, extra: { workers: 1, 'upstream-ca-file': certs.caFile } });
  proxied = await startProxy({ openaiCompat: accounts.slice(0, 1),
    extra: { workers: 1, 'proxy-url': `http://127.0.0.1:${deadPort}` } });
});

after(async () => {
  await proxy?.stop();
  await proxied?.stop();
  await mock?.close();
  await tls?.close();
  certs?.remove();
});

async function messages(p, model, stream) {
  const r = await fetch(`${p.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model, stream, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] }),
    signal: AbortSignal.timeout(15000),
  });
  return { status: r.status, type: r.headers.get('content-type') || '', text: await r.text() };
}

// The text an Anthropic answer carries: a message's content or a stream's deltas.
function answerText(r) {
  if (/event-stream/.test(r.type)) {
    let out = '';
    for (const block of r.text.split('\n\n')) {
      const data = block.split('\n').find((l) => l.startsWith('data: '));
      if (!data) continue;
      const ev = JSON.parse(data.slice(6));
      if (ev.type === 'content_block_delta' && ev.delta?.type === 'text_delta') out += ev.delta.text;
    }
    return out;
  }
  const j = JSON.parse(r.text);
  assert.equal(j.type, 'message', r.text);
  return j.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
}

test('translated over http: many requests, streams among them, on one upstream connection', T(), async () => {
  const n0 = mock.requests.length;
  for (let i = 0; i < 8; i++) {
    const r = await messages(proxy, 'tr-plain', i % 2 === 1);
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.equal(answerText(r), 'over http', `request ${i}`);
  }
  const reqs = mock.requests.slice(n0);
  assert.equal(reqs.length, 8);
  assert.ok(reqs.every((q) => q.format === 'openai' && q.model === 'up-plain'), 'translated to chat');
  assert.equal(new Set(reqs.map((q) => q.connId)).size, 1, `connections: ${reqs.map((q) => q.connId)}`);
  // The request as an upstream sees it: the account's key, the Host of the URL.
  assert.equal(reqs[0].headers.authorization, 'Bearer k-plain');
  assert.equal(reqs[0].headers.host, new URL(mock.url).host);
  assert.equal(reqs[0].headers['content-length'], String(Buffer.byteLength(reqs[0].rawBody)));
});

test('translated over https with upstream-ca-file: one TLS handshake for many requests', T(), async () => {
  const n0 = tls.requests.length;
  for (let i = 0; i < 8; i++) {
    const r = await messages(proxy, 'tr-tls', i % 2 === 0);
    assert.equal(r.status, 200, `request ${i}: ${r.text}`);
    assert.equal(answerText(r), 'over tls', `request ${i}`);
  }
  const reqs = tls.requests.slice(n0);
  assert.equal(reqs.length, 8);
  assert.equal(tls.tlsConns, 1, `the upstream saw ${tls.tlsConns} TLS handshakes`);
  assert.deepEqual([...new Set(reqs.map((q) => q.conn))], [1]);
  assert.equal(reqs[0].headers.host, `localhost:${tls.port}`);
  assert.equal(reqs[0].key, 'k-tls');
});

test('a proxy-url is honoured: the fetch goes to libcurl and the proxy, not to the upstream', T(), async () => {
  const n0 = mock.requests.length;
  const r = await messages(proxied, 'tr-plain', false);
  assert.ok(r.status >= 500 && r.status < 600, `status ${r.status}: ${r.text}`);
  const j = JSON.parse(r.text);
  assert.equal(j.type, 'error', r.text);
  assert.equal(typeof j.error.message, 'string');
  assert.equal(mock.requests.length, n0, 'nothing reached the upstream past the proxy');
});

test('a burst of 300 events in one upstream write: every delta, in order, once', T(), async () => {
  for (let i = 0; i < 2; i++) {
    const r = await messages(proxy, 'tr-burst', true);
    assert.equal(r.status, 200, r.text);
    assert.equal(answerText(r), WORDS.join(''));
    const types = r.text.split('\n').filter((l) => l.startsWith('event: ')).map((l) => l.slice(7));
    assert.equal(types[0], 'message_start');
    assert.equal(types.at(-1), 'message_stop');
    assert.equal(types.filter((t) => t === 'content_block_delta').length, WORDS.length);
  }
});
