// Issue 13, POST /v0/management/vertex/import (fact sheet §1.4, §3.5): a
// Google service account uploaded, checked, written 0600 as CLIProxyAPI
// names it, used at once against a mock Vertex AI (its token minted by a
// JWT bearer grant whose RS256 signature the mock checks with the public
// key; a 401 mints a new one), and deleted; bad uploads and the access
// rules; no key or token in the log.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startProxy } from './lib/proxy.mjs';
import { until } from './lib/wait.mjs';
import { mgmtCall, sendJson, bodyServer } from './lib/mgmt.mjs';

const SECRET = 'vertex-mgmt-secret-2291';
const CLIENT = 'sk-vertex-client-5120';
const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const PEM = privateKey.export({ type: 'pkcs8', format: 'pem' });
const SA = {
  type: 'service_account', project_id: 'vx-project', private_key_id: 'kid-1', private_key: PEM,
  client_email: 'svc@vx-project.iam.gserviceaccount.com', client_id: '1234', token_uri: 'https://evil.example/token',
};

const mock = { grants: [], failures: [], inference: [], reject: new Set(), seq: 0 };
let server, mockUrl, proxy, authDir;

function checkAssertion(jwt) {
  const [h, c, s] = jwt.split('.');
  const ok = crypto.verify('RSA-SHA256', Buffer.from(`${h}.${c}`), publicKey, Buffer.from(s, 'base64url'));
  if (!ok) return 'bad signature';
  const head = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(c, 'base64url'));
  if (head.alg !== 'RS256' || head.kid !== 'kid-1') return 'header';
  if (claims.iss !== SA.client_email) return 'iss';
  if (claims.aud !== `${mockUrl}/token`) return `aud ${claims.aud}`;
  if (claims.scope !== 'https://www.googleapis.com/auth/cloud-platform') return 'scope';
  if (!(claims.exp > claims.iat && Math.abs(claims.iat - Date.now() / 1000) < 300)) return 'times';
  return null;
}

before(async () => {
  server = bodyServer((req, res, raw) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (req.method === 'POST' && p === '/token') {
      const q = new URLSearchParams(raw);
      if (q.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
        mock.failures.push('grant_type');
        return sendJson(res, 400, { error: 'unsupported_grant_type' });
      }
      const why = checkAssertion(q.get('assertion') || '');
      if (why) {
        mock.failures.push(why);
        return sendJson(res, 400, { error: 'invalid_grant', error_description: why });
      }
      const token = `ya29.VERTEX-TOKEN-${++mock.seq}`;
      mock.grants.push(token);
      return sendJson(res, 200, { access_token: token, expires_in: 3599, token_type: 'Bearer' });
    }
    const m = p.match(/^\/v1\/projects\/([^/]+)\/locations\/([^/]+)\/publishers\/google\/models\/([^:]+):generateContent$/);
    if (req.method === 'POST' && m) {
      const auth = req.headers.authorization;
      mock.inference.push({ project: m[1], location: m[2], model: m[3], auth });
      if (mock.reject.has(auth)) return sendJson(res, 401, { error: { code: 401, message: 'token expired', status: 'UNAUTHENTICATED' } });
      return sendJson(res, 200, { candidates: [{ content: { role: 'model', parts: [{ text: 'hi from vertex' }] }, finishReason: 'STOP' }],
        usageMetadata: { promptTokenCount: 2, candidatesTokenCount: 3, totalTokenCount: 5 } });
    }
    return sendJson(res, 404, { error: { code: 404, message: `mock: ${p}` } });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  mockUrl = `http://127.0.0.1:${server.address().port}`;
  proxy = await startProxy({
    apiKeys: [CLIENT],
    extra: {
      'remote-management': { 'secret-key': SECRET },
      'oauth-endpoints': { vertex: { 'token-url': `${mockUrl}/token`, 'api-base-url': mockUrl } },
    },
  });
  authDir = path.join(proxy.dir, 'auths');
});

after(async () => {
  if (proxy) {
    const log = proxy.stderr();
    for (const s of ['VERTEX-TOKEN', 'BEGIN PRIVATE KEY', PEM.split('\n')[1], SECRET]) assert.ok(!log.includes(s), `${s} in the log`);
    assert.equal((await proxy.stop()).code, 0);
  }
  await new Promise((r) => server.close(r));
});

function multipart(fields) {
  const b = `----cpx${crypto.randomBytes(8).toString('hex')}`;
  let body = '';
  for (const f of fields) {
    body += `--${b}\r\nContent-Disposition: form-data; name="${f.name}"${f.filename ? `; filename="${f.filename}"` : ''}\r\n`;
    if (f.filename) body += 'Content-Type: application/json\r\n';
    body += `\r\n${f.data}\r\n`;
  }
  return { body: `${body}--${b}--\r\n`, type: `multipart/form-data; boundary=${b}` };
}
async function upload(fields, key = SECRET) {
  const m = multipart(fields);
  const r = await fetch(`${proxy.url}/v0/management/vertex/import`, {
    method: 'POST', headers: { 'Content-Type': m.type, ...(key ? { 'X-Management-Key': key } : {}) }, body: m.body,
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, json, text };
}
const generate = (model = 'gemini-2.5-pro') => fetch(`${proxy.url}/v1beta/models/${model}:generateContent`, {
  method: 'POST', headers: { 'x-goog-api-key': CLIENT, 'content-type': 'application/json' },
  body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }),
});

test('bad uploads are refused with a reason, nothing written', async () => {
  const cases = [
    [[{ name: 'file', filename: 'sa.json', data: 'not json' }], /invalid service account JSON/],
    [[{ name: 'file', filename: 'sa.json', data: JSON.stringify({ ...SA, type: 'authorized_user' }) }], /service_account/],
    [[{ name: 'file', filename: 'sa.json', data: JSON.stringify({ ...SA, private_key: undefined }) }], /private_key is missing/],
    [[{ name: 'file', filename: 'sa.json', data: JSON.stringify({ ...SA, private_key: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' }) }],
      /private_key: not a PEM private key/],
    [[{ name: 'file', filename: 'sa.json', data: JSON.stringify(SA) }, { name: 'location', data: '../x' }], /location/],
    [[{ name: 'location', data: 'us-east1' }], /file is required/],
  ];
  for (const [fields, re] of cases) {
    const r = await upload(fields);
    assert.equal(r.status, 400, r.text);
    assert.match(r.json.error, re);
  }
  assert.deepEqual(fs.readdirSync(authDir).filter((f) => f.startsWith('vertex-')), []);
});

test('no key, a wrong key: 401; nothing written', async () => {
  assert.equal((await upload([{ name: 'file', filename: 'sa.json', data: JSON.stringify(SA) }], null)).status, 401);
  assert.equal((await upload([{ name: 'file', filename: 'sa.json', data: JSON.stringify(SA) }], 'wrong')).status, 401);
  assert.deepEqual(fs.readdirSync(authDir).filter((f) => f.startsWith('vertex-')), []);
});

test('import -> the account serves at once (token minted, a 401 mints anew) -> delete', async () => {
  assert.notEqual((await generate()).status, 200, 'no account before the import');
  const r = await upload([{ name: 'file', filename: 'my-sa.json', data: JSON.stringify(SA) }, { name: 'location', data: 'europe-west4' }]);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'ok', 'auth-file': 'vertex-vx-project.json', project_id: 'vx-project',
    email: SA.client_email, location: 'europe-west4' });
  const file = path.join(authDir, 'vertex-vx-project.json');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.deepEqual(Object.keys(doc), ['service_account', 'project_id', 'email', 'location', 'type']);
  assert.deepEqual(doc.service_account, SA);
  assert.equal(doc.type, 'vertex');
  const listed = (await mgmtCall(proxy.url, '/auth-files', { key: SECRET })).json.files.find((f) => f.name === 'vertex-vx-project.json');
  assert.ok(listed, 'listed in /auth-files');
  assert.equal(listed.type, 'vertex');

  const res = await generate();
  assert.equal(res.status, 200, `${await res.clone().text()}\nmock: ${mock.failures.join('; ')}`);
  assert.equal((await res.json()).candidates[0].content.parts[0].text, 'hi from vertex');
  const hit = mock.inference.at(-1);
  assert.deepEqual(hit, { project: 'vx-project', location: 'europe-west4', model: 'gemini-2.5-pro', auth: `Bearer ${mock.grants[0]}` });
  assert.deepEqual(mock.failures, []);
  // the minted token is kept in the file (the next request needs no grant)
  await until(() => JSON.parse(fs.readFileSync(file, 'utf8')).access_token === mock.grants[0], 'the token written back');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  const grants = mock.grants.length;
  assert.equal((await generate()).status, 200);
  assert.equal(mock.grants.length, grants, 'no new grant while the token is good');

  // the upstream refuses the token: a new one is minted and the request retried
  mock.reject.add(`Bearer ${mock.grants.at(-1)}`);
  const again = await generate();
  assert.equal(again.status, 200, await again.clone().text());
  await again.text();
  assert.equal(mock.grants.length, grants + 1);
  assert.equal(mock.inference.at(-1).auth, `Bearer ${mock.grants.at(-1)}`);

  const d = await mgmtCall(proxy.url, '/auth-files?name=vertex-vx-project.json', { method: 'DELETE', key: SECRET });
  assert.equal(d.status, 200, d.text);
  assert.ok(!fs.existsSync(file));
  const seen = mock.inference.length;
  const gone = await until(async () => {
    const g = await generate();
    await g.text();
    return g.status !== 200 && g;
  }, 'the account gone');
  assert.notEqual(gone.status, 200);
  assert.equal(mock.inference.length, seen, 'nothing sent upstream after the delete');
});

test('a raw JSON body with ?location=global&prefix=team: its own file, the global host path', async () => {
  const r = await mgmtCall(proxy.url, '/vertex/import?location=global&prefix=team', { method: 'POST', key: SECRET,
    body: JSON.stringify(SA) });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json['auth-file'], 'vertex-team-vx-project.json');
  const doc = JSON.parse(fs.readFileSync(path.join(authDir, 'vertex-team-vx-project.json'), 'utf8'));
  assert.equal(doc.prefix, 'team');
  assert.equal(doc.location, 'global');
  const res = await until(async () => {
    const g = await generate('team/gemini-2.5-flash');
    return g.status === 200 && g;
  }, 'the prefixed account serves');
  await res.text();
  assert.deepEqual(mock.inference.at(-1).location, 'global');
  assert.equal(mock.inference.at(-1).model, 'gemini-2.5-flash');
});
