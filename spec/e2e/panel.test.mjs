// Issue 14: the built-in web control panel, in headless Chromium (Debian's
// chromium driven by playwright-core) against the real binary with a mock
// upstream. Each page is checked against what the management API itself
// answers: where a route exists the page must show its data, where it does
// not (the management API is built in parallel) the page must show the
// API's error. Screenshots of every page, light and dark, desktop and
// phone width, go to <build>/artifacts/panel/ (CPX_PANEL_SHOTS overrides).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';

import { startMock } from './lib/mock_upstream.mjs';
import { startProxy, BIN, freePort, healthz } from './lib/proxy.mjs';

const CHROMIUM = process.env.CPX_CHROMIUM || '/usr/bin/chromium';
const SECRET = 'panel-e2e-secret-Hq72';
const CLIENT_KEY = 'sk-panel-client-0001';
const CRED_MODEL = 'claude-sonnet-4-5-20250929'; // served by the uploaded Claude credential
const SHOTS = process.env.CPX_PANEL_SHOTS || path.join(path.dirname(BIN), 'artifacts', 'panel');
const T = (ms = 60000) => ({ timeout: ms });

let chromium = null;
let skip = false;
if (!fs.existsSync(CHROMIUM)) {
  skip = `chromium not found at ${CHROMIUM} (scripts/setup.sh --test installs Debian's chromium)`;
} else {
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    skip = `playwright-core is not installed (scripts/setup.sh --test): ${e.message}`;
  }
}
if (skip) console.log(`# panel tests skipped: ${skip}`);

let mock, proxy, browser, oauthMock;

// A mock OAuth token endpoint for the login started from the accounts page:
// it issues codes bound to the authorize URL's challenge and redirect URI
// (approve) and exchanges them once, checking the PKCE verifier.
const grants = new Map();
function approve(authUrl) {
  const q = new URL(authUrl).searchParams;
  const code = `panel-code-${crypto.randomBytes(6).toString('hex')}`;
  grants.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri') });
  return code;
}
async function startOAuthMock() {
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => { raw += c; });
    req.on('end', () => {
      let body = {};
      try { body = JSON.parse(raw); } catch { /* refused below */ }
      const g = grants.get(body.code);
      const ok = g && body.redirect_uri === g.redirect_uri
        && crypto.createHash('sha256').update(body.code_verifier || '').digest('base64url') === g.challenge;
      if (g) grants.delete(body.code);
      const out = ok
        ? { token_type: 'Bearer', access_token: 'sk-ant-oat01-PANEL-OAUTH', refresh_token: 'sk-ant-ort01-PANEL-OAUTH',
          expires_in: 28800, account: { uuid: 'acc-p', email_address: 'oauth-panel@example.com' } }
        : { error: 'invalid_grant' };
      const text = JSON.stringify(out);
      res.writeHead(ok ? 200 : 400, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

// What the management API answers for a route, straight, without the panel.
async function mgmt(route, opts = {}) {
  const r = await fetch(`${proxy.url}/v0/management${route}`, {
    ...opts, headers: { Authorization: `Bearer ${SECRET}`, ...(opts.headers || {}) },
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* text */ }
  return { status: r.status, text, json };
}
const has = async (route) => (await mgmt(route)).status !== 404;

async function chat(model, content) {
  const r = await fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${CLIENT_KEY}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content }] }),
  });
  await r.text();
  return r.status;
}

async function newPage({ dark = false, phone = false } = {}) {
  const ctx = await browser.newContext({
    viewport: phone ? { width: 390, height: 844 } : { width: 1366, height: 900 },
    deviceScaleFactor: 1,
    colorScheme: dark ? 'dark' : 'light',
    isMobile: phone,
    hasTouch: phone,
  });
  const page = await ctx.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // a failed API call logs a resource error; CSP violations and script errors are what count
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.problems = problems;
  return page;
}

async function signIn(page, key = SECRET) {
  await page.goto(`${proxy.url}/management.html`);
  await page.fill('#login-key', key);
  await page.press('#login-key', 'Enter');
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

before(async () => {
  if (skip) return;
  mock = await startMock({ models: ['up-model'] });
  mock.reply({ text: 'hello from the mock', usage: { input: 11, output: 7 } });
  oauthMock = await startOAuthMock();
  proxy = await startProxy({
    apiKeys: [CLIENT_KEY],
    openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-key-a'], models: [{ name: 'up-model', alias: 'panel-model' }] }],
    extra: { 'remote-management': { 'secret-key': SECRET }, 'usage-statistics-enabled': true, metrics: { enabled: true },
      'logging-to-file': true,
      'oauth-endpoints': { claude: { 'auth-url': 'https://claude.example/oauth/authorize', 'token-url': `${oauthMock.url}/claude/token` } } },
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
});

after(async () => {
  if (browser) await browser.close();
  if (proxy) await proxy.stop();
  if (mock) await mock.close();
  if (oauthMock) await oauthMock.close();
});

test('static files: types, ETag revalidation, a strict CSP, nothing outside panel/', { skip, ...T() }, async () => {
  const r = await fetch(`${proxy.url}/management.html`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/html/);
  const csp = r.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
  assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(r.headers.get('cache-control'), 'no-cache');
  const html = await r.text();
  assert.match(html, /<script type="module" src="\/panel\/js\/app.js">/);
  assert.doesNotMatch(html, /https?:\/\//, 'the page loads nothing from another origin');
  const etag = r.headers.get('etag');
  assert.ok(etag);
  const again = await fetch(`${proxy.url}/management.html`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);

  const js = await fetch(`${proxy.url}/panel/js/app.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  const css = await fetch(`${proxy.url}/panel/panel.css`);
  assert.match(css.headers.get('content-type'), /^text\/css/);
  const svg = await fetch(`${proxy.url}/panel/icon.svg`);
  assert.match(svg.headers.get('content-type'), /^image\/svg\+xml/);

  // every asset the shipped files name is served, and no file names a remote URL
  const dir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../panel');
  const walk = (d) => fs.readdirSync(d, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
  for (const f of walk(dir)) {
    const rel = path.relative(dir, f);
    const url = rel === 'management.html' ? '/management.html' : `/panel/${rel}`;
    const a = await fetch(`${proxy.url}${url}`);
    assert.equal(a.status, 200, url);
    const text = await a.text();
    assert.equal(text, fs.readFileSync(f, 'utf8'), url);
    assert.doesNotMatch(text.replace(/http:\/\/www\.w3\.org\/2000\/svg/g, '').replace(/http:\/\/localhost:…/g, ''),
      /https?:\/\/[a-z]/i, `${url} names no remote URL`);
  }

  // raw paths: no traversal, no hidden files, no directory, no other methods
  for (const p of ['/panel/../lua/rt/boot.lua', '/panel/%2e%2e/lua/rt/boot.lua', '/panel/.hidden.js',
    '/panel/js', '/panel/js/', '/panel/missing.js', '/panel/panel.css.bak', '/panel//js/app.js']) {
    const res = await rawGet(p);
    assert.equal(res.status, 404, p);
  }
  const post = await fetch(`${proxy.url}/panel/js/app.js`, { method: 'POST' });
  assert.equal(post.status, 404);
});

// GET with the path sent byte for byte (fetch would normalise "..").
async function rawGet(p) {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = net.connect(proxy.port, '127.0.0.1', () => s.write(`GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    let buf = '';
    s.on('data', (d) => { buf += d; });
    s.on('end', () => resolve({ status: Number(buf.split(' ')[1]), text: buf }));
    s.on('error', reject);
  });
}

test('disable-control-panel: true answers 404 for the page and its assets', { skip, ...T() }, async () => {
  const p = await startProxy({ extra: { 'remote-management': { 'secret-key': SECRET, 'disable-control-panel': true } } });
  try {
    assert.equal((await fetch(`${p.url}/management.html`)).status, 404);
    assert.equal((await fetch(`${p.url}/panel/js/app.js`)).status, 404);
  } finally {
    await p.stop();
  }
});

test('a wrong key shows the API error and keeps the sign-in form; the right key opens the dashboard', { skip, ...T() }, async () => {
  const page = await newPage();
  await signIn(page, 'not-the-key');
  await page.waitForSelector('#login-error:not([hidden])');
  const err = await page.textContent('#login-error');
  const direct = await mgmt('/config', { headers: { Authorization: 'Bearer not-the-key' } });
  assert.equal(direct.status, 401);
  assert.match(err, /401/);
  assert.match(err, new RegExp((direct.json && (direct.json.error || direct.json.message)) || 'invalid', 'i'));
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused key is not kept');
  assert.ok(await page.isHidden('#nav'));
  await shot(page, 'login-error-light-desktop');

  await page.fill('#login-key', SECRET);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#d-health.ok');
  assert.equal(await page.textContent('#d-health'), 'ok');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cliproxy.management-key')), SECRET);
  // asked once: a reload keeps the session
  await page.reload();
  await page.waitForSelector('#d-health.ok');
  assert.ok(await page.isHidden('#login'));
  // signing out forgets it
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('keyboard only: sign in, reach every page from the navigation, dismiss a dialog with Escape', { skip, ...T() }, async () => {
  const page = await newPage();
  await page.goto(`${proxy.url}/management.html`);
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'login-key');
  await page.keyboard.type(SECRET);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#d-health.ok');
  const want = ['dashboard', 'usage', 'accounts', 'providers', 'config', 'logs'];
  for (const name of want) {
    // from the top of the document, Tab until the page's link has focus, then Enter
    await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
    let found = false;
    for (let i = 0; i < 20 && !found; i++) {
      await page.keyboard.press('Tab');
      found = await page.evaluate((n) => document.activeElement && document.activeElement.dataset.page === n, name);
    }
    assert.ok(found, `the ${name} link is reachable with Tab`);
    await page.keyboard.press('Enter');
    await page.waitForFunction((n) => document.querySelector('#page').dataset.page === n
      && document.querySelector(`#nav a[data-page=${n}]`).getAttribute('aria-current') === 'page', name);
  }
  // a confirmation dialog takes focus and Escape cancels it
  await page.goto(`${proxy.url}/management.html#/logs`);
  await page.waitForSelector('#l-status');
  await page.focus('button.danger');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#confirm[open]');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'confirm-cancel');
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => !document.querySelector('#confirm').open);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('every page renders the API data (or the API error), light and dark, desktop and phone', { skip, ...T(180000) }, async () => {
  for (let i = 0; i < 6; i++) assert.equal(await chat('panel-model', `hello ${i}`), 200);
  const pages = ['dashboard', 'usage', 'accounts', 'providers', 'config', 'logs'];
  for (const dark of [false, true]) {
    for (const phone of [false, true]) {
      const page = await newPage({ dark, phone });
      await signIn(page);
      await page.waitForSelector('#d-health.ok');
      for (const name of pages) {
        await page.goto(`${proxy.url}/management.html#/${name}`);
        await page.waitForFunction((n) => document.querySelector('#page').dataset.page === n, name);
        // each page settles: nothing left "Loading…"
        await page.waitForFunction(() => !document.querySelector('#page').textContent.includes('Loading…'), null, { timeout: 15000 });
        await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
        await shot(page, `${name}-${dark ? 'dark' : 'light'}-${phone ? 'phone' : 'desktop'}`);
        if (phone) {
          const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
          assert.ok(overflow <= 1, `${name} fits a phone (overflow ${overflow}px)`);
        }
      }
      assert.deepEqual(page.problems, [], `no script or CSP error (${dark ? 'dark' : 'light'} ${phone ? 'phone' : 'desktop'})`);
      await page.context().close();
    }
  }
});

test('page data matches the API', { skip, ...T(120000) }, async () => {
  for (let i = 0; i < 6; i++) assert.equal(await chat('panel-model', `data ${i}`), 200);
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');

  // dashboard: the last hour's requests from /usage, streams from /metrics
  const usage = await mgmt('/usage');
  if (usage.status === 200) {
    await page.waitForFunction(() => /^[\d,]+$/.test(document.querySelector('#d-requests').textContent));
    const shown = Number((await page.textContent('#d-requests')).replace(/,/g, ''));
    assert.ok(shown >= 6 && shown <= usage.json.usage.total_requests, `${shown} requests in the last hour`);
  } else {
    await page.waitForSelector('#d-requests.bad');
    assert.match(await page.textContent('#d-requests'), new RegExp(String(usage.status)));
  }
  const m = await fetch(`${proxy.url}/metrics`, { headers: { Authorization: `Bearer ${SECRET}` } });
  const mtext = await m.text();
  await page.waitForFunction(() => document.querySelector('#d-streams').textContent !== '…');
  const streams = await page.textContent('#d-streams');
  if (m.status === 200 && /cliproxy_streams_in_flight (\d+)/.test(mtext)) {
    assert.equal(streams, mtext.match(/cliproxy_streams_in_flight (\d+)/)[1]);
  } else if (m.status !== 200) {
    assert.match(streams, new RegExp(`/metrics answered ${m.status}`));
  }

  // accounts: an OAuth login shows the URL to open, or the API's error
  await page.goto(`${proxy.url}/management.html#/accounts`);
  await page.selectOption('#a-login-provider', 'anthropic');
  await page.click('#a-login-start');
  await page.waitForSelector('#a-login-url, #a-login-out .error');
  if (await page.$('#a-login-url')) {
    assert.match(await page.getAttribute('#a-login-url', 'href'), /^https:\/\/.*state=/);
  } else {
    const direct = await mgmt('/anthropic-auth-url?is_webui=true');
    assert.ok(direct.status >= 400);
    assert.match(await page.textContent('#a-login-out .error'), new RegExp(`login: ${direct.status}`));
  }

  // providers: the client keys, masked
  await page.goto(`${proxy.url}/management.html#/providers`);
  const keys = await mgmt('/api-keys');
  if (keys.status === 200) {
    await page.waitForSelector('#p-api-keys table');
    const text = await page.textContent('#p-api-keys');
    assert.match(text, /sk-p…0001/);
    assert.doesNotMatch(text, new RegExp(CLIENT_KEY), 'keys are masked');
  } else {
    await page.waitForSelector('#p-api-keys .error');
    assert.match(await page.textContent('#p-api-keys .error'), new RegExp(String(keys.status)));
  }

  // providers: every list has its card; an entry added and deleted through the page
  for (const k of ['gemini-api-key', 'claude-api-key', 'codex-api-key', 'vertex-api-key', 'openai-compatibility']) {
    await page.waitForSelector(`#p-${k} table, #p-${k} .empty, #p-${k} .error`);
  }
  const claude = await mgmt('/claude-api-key');
  if (claude.status === 200) {
    const card = page.locator('#p-claude-api-key');
    await page.fill('#p-claude-api-key-api-key', 'sk-ant-panel-test-key-9');
    await page.fill('#p-claude-api-key-base-url', `${mock.url}`);
    await card.locator('button[type=submit]').click();
    await card.locator('.result.ok').waitFor();
    const added = (await mgmt('/claude-api-key')).json['claude-api-key'];
    assert.deepEqual(added.map((e) => [e['api-key'], e['base-url']]), [['sk-ant-panel-test-key-9', mock.url]]);
    await card.locator('td', { hasText: 'sk-a…ey-9' }).waitFor();
    assert.doesNotMatch(await card.textContent(), /sk-ant-panel-test-key-9/, 'the new key is masked too');
    await card.locator('button.danger').click();
    await page.click('#confirm-ok');
    await card.locator('.empty').waitFor();
    const left = (await mgmt('/claude-api-key')).json['claude-api-key'];
    assert.equal((left || []).length, 0);
  } else {
    assert.match(await page.textContent('#p-claude-api-key .error'), new RegExp(String(claude.status)));
  }

  // config: the YAML the server has
  await page.goto(`${proxy.url}/management.html#/config`);
  const yaml = await mgmt('/config.yaml');
  if (yaml.status === 200) {
    await page.waitForFunction(() => document.querySelector('#c-text').value.length > 0);
    assert.equal(await page.inputValue('#c-text'), yaml.text);
  } else {
    await page.waitForSelector('#c-result.error');
  }

  // logs: the lines the server has, filterable
  // (asked before the page: the log only grows, so the page shows at least these)
  const logs = await mgmt('/logs?limit=1000');
  await page.goto(`${proxy.url}/management.html#/logs`);
  if (logs.status === 200) {
    await page.waitForFunction(() => /of \d+ lines/.test(document.querySelector('#l-status').textContent));
    const n = Number((await page.textContent('#l-status')).match(/of (\d+) lines/)[1]);
    assert.ok(n >= (logs.json.lines || []).length, `${n} lines shown`);
    // filter by one request's id: exactly that request's lines
    const withRid = logs.json.lines.map((l) => l.match(/^\[[^\]]+\] \[([0-9a-f]{8})\]/)).filter(Boolean);
    assert.ok(withRid.length > 0, 'the log has request lines');
    const rid = withRid[withRid.length - 1][1];
    await page.fill('#l-rid', rid);
    await page.waitForFunction((r) => new RegExp(`^\\d+ of`).test(document.querySelector('#l-status').textContent)
      && [...document.querySelectorAll('#l-out .logline')].every((l) => l.textContent.includes(r)), rid);
    const shownN = Number((await page.textContent('#l-status')).match(/^(\d+) of/)[1]);
    const apiN = logs.json.lines.filter((l) => l.includes(`] [${rid}] [`)).length;
    assert.ok(shownN >= apiN && shownN > 0, `${shownN} lines of request ${rid} (the API had ${apiN})`);
    // a level filter drops the other levels
    await page.fill('#l-rid', '');
    await page.selectOption('#l-level', 'warn');
    await page.waitForFunction(() => [...document.querySelectorAll('#l-out .logline')].every((l) => l.classList.contains('lv-warn')));
    await page.selectOption('#l-level', 'all');
    // following: new lines arrive without a reload, none twice
    const before = Number((await page.textContent('#l-status')).match(/of (\d+) lines/)[1]);
    assert.equal(await chat('panel-model', 'follow me'), 200);
    await page.waitForFunction((b) => Number(document.querySelector('#l-status').textContent.match(/of (\d+) lines/)[1]) > b + 1,
      before, { timeout: 20000 });
    const held = await page.$$eval('#l-out .logline', (ls) => ls.map((l) => l.textContent.replace(/\n$/, '')));
    const now = (await mgmt('/logs?limit=10000')).json.lines;
    const count = (arr) => arr.reduce((m, l) => m.set(l, (m.get(l) || 0) + 1), new Map());
    const inApi = count(now);
    for (const [line, k] of count(held)) {
      assert.ok((inApi.get(line) || 0) >= k, `held ${k}× but the log has it ${inApi.get(line) || 0}×: ${line}`);
    }
    // open that request's log: its text, or the API's error
    await page.fill('#l-open-id', rid);
    await page.press('#l-open-id', 'Enter');
    await page.waitForSelector('#l-request-text, #l-request .error');
    const one = await mgmt(`/request-log-by-id/${rid}`);
    if (one.status === 200) assert.equal(await page.textContent('#l-request-text'), one.text);
    else assert.match(await page.textContent('#l-request .error'), new RegExp(String(one.status)));
  } else {
    await page.waitForSelector('#l-status.error');
    assert.match(await page.textContent('#l-status'), new RegExp(String(logs.status)));
  }
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('usage chart after traffic', { skip, ...T(60000) }, async () => {
  for (let i = 0; i < 4; i++) assert.equal(await chat('panel-model', `usage ${i}`), 200);
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');
  await page.goto(`${proxy.url}/management.html#/usage`);
  const u = await mgmt('/usage');
  if (u.status !== 200) {
    await page.waitForSelector('#page .error');
    assert.match(await page.textContent('#page .error'), new RegExp(String(u.status)));
    await page.context().close();
    return;
  }
  // the API's own count, and bars for this hour in the requests-per-hour chart
  const total = u.json.usage.total_requests;
  assert.ok(total >= 4, `usage counted ${total} requests`);
  await page.waitForSelector('#u-req-hour svg rect.bar');
  const bars = await page.$$eval('#u-req-hour svg rect.bar title', (ts) => ts.map((t) => t.textContent));
  const counted = bars.map((t) => Number(t.match(/: ([\d,]+)$/)[1].replace(/,/g, ''))).reduce((a, b) => a + b, 0);
  assert.ok(counted >= 4, `bars add up to ${counted}`);
  assert.match(await page.textContent('#u-by-model'), /panel-model/);
  await page.waitForSelector('#u-tok-hour svg rect.bar');
  await shot(page, 'usage-after-traffic-light-desktop');
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('accounts: upload, disable, reset cooldown, delete', { skip, ...T(60000) }, async () => {
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');
  await page.goto(`${proxy.url}/management.html#/accounts`);
  const name = 'claude-panel@example.com.json';
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-panel-')), name);
  fs.writeFileSync(file, JSON.stringify({ type: 'claude', email: 'panel@example.com', access_token: 'sk-ant-oat-panel',
    refresh_token: 'rt-panel', expired: '2099-01-01T00:00:00Z', base_url: mock.url }));
  if (!(await has('/auth-files'))) {
    await page.waitForSelector('#a-list .error');
    assert.match(await page.textContent('#a-list .error'), /404/);
    await page.setInputFiles('#a-upload-file', file);
    await page.click('#a-upload button[type=submit]');
    await page.waitForSelector('#a-upload-result.error');
    assert.match(await page.textContent('#a-upload-result'), /Upload failed: 404/);
    await page.context().close();
    return;
  }
  await page.setInputFiles('#a-upload-file', file);
  await page.click('#a-upload button[type=submit]');
  await page.waitForSelector('#a-upload-result.ok');
  const row = page.locator('#a-list tr', { hasText: name });
  await row.waitFor();
  const listed = (await mgmt('/auth-files')).json.files.find((f) => f.name === name);
  assert.ok(listed, 'the API lists the uploaded file');
  assert.ok(fs.existsSync(path.join(proxy.dir, 'auths', name)), 'the file is in auth-dir');

  // the account answers 429 with a retry-after: it cools, and the page counts down
  mock.reply((req) => (JSON.stringify(req.headers).includes('sk-ant-oat-panel')
    ? { error: { status: 429, message: 'rate limited', headers: { 'retry-after': '600' } } }
    : { text: 'hello from the mock', usage: { input: 11, output: 7 } }));
  try {
    const r = await fetch(`${proxy.url}/v1/messages`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: CRED_MODEL, max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }),
    });
    await r.text();
    assert.equal(r.status, 429);
  } finally {
    mock.reply({ text: 'hello from the mock', usage: { input: 11, output: 7 } });
  }
  const cooling = (await mgmt('/auth-files')).json.files.find((f) => f.name === name);
  assert.ok(cooling.next_retry_after, 'the API reports the cooldown');
  await page.click('text=Refresh');
  // the Cooldown cell's: the Refresh cell counts down to the token's next
  // refresh too (this credential expires in 2099), once the schedule is known
  const cd = page.locator('#a-list tr', { hasText: name }).locator('td.cooldown .countdown').first();
  await cd.waitFor();
  const first = await cd.textContent();
  assert.match(first, /^(\d+m )?\d+s$/);
  // live: the text changes as the seconds pass (the page's 1 s ticker)
  await page.waitForFunction((n) => {
    const row = [...document.querySelectorAll('#a-list tr')].find((tr) => tr.textContent.includes(n));
    const el = row && row.querySelector('td.cooldown .countdown');
    if (!el) return false;
    if (!el.dataset.seen) { el.dataset.seen = el.textContent; return false; }
    return el.textContent !== el.dataset.seen;
  }, name, { polling: 200 });

  await row.locator('button[data-action=toggle]').click();
  await page.waitForSelector('#a-result.ok');
  await page.locator('#a-list tr', { hasText: name }).locator('.badge', { hasText: 'disabled' }).waitFor();
  assert.equal((await mgmt('/auth-files')).json.files.find((f) => f.name === name).disabled, true);

  await page.locator('#a-list tr', { hasText: name }).locator('button[data-action=reset]').click();
  await page.waitForFunction(() => /Reset cooldown/.test(document.querySelector('#a-result').textContent)
    || /Cooldown reset/.test(document.querySelector('#a-result').textContent));
  assert.match(await page.textContent('#a-result'), /Cooldown reset/);
  assert.equal((await mgmt('/auth-files')).json.files.find((f) => f.name === name).next_retry_after, null,
    'the API has no cooldown left');
  await page.waitForFunction((n) => {
    const row = [...document.querySelectorAll('#a-list tr')].find((tr) => tr.textContent.includes(n));
    return row && !row.querySelector('td.cooldown .countdown');
  }, name);
  await shot(page, 'accounts-cycle-light-desktop');

  await page.locator('#a-list tr', { hasText: name }).locator('button[data-action=delete]').click();
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction((n) => !document.querySelector('#a-list').textContent.includes(n), name);
  assert.equal((await mgmt('/auth-files')).json.files.find((f) => f.name === name), undefined);
  assert.ok(!fs.existsSync(path.join(proxy.dir, 'auths', name)), 'the file is gone from auth-dir');
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('config edit: an error is shown at its line, then a fix saves', { skip, ...T(60000) }, async () => {
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');
  await page.goto(`${proxy.url}/management.html#/config`);
  const before = await mgmt('/config.yaml');
  if (before.status !== 200) {
    await page.waitForSelector('#c-result.error');
    await page.context().close();
    return;
  }
  await page.waitForFunction(() => document.querySelector('#c-text').value.length > 0);
  const good = await page.inputValue('#c-text');
  // a broken line appended: an unclosed flow sequence
  const lines = good.replace(/\n+$/, '').split('\n');
  const badLine = lines.length + 1;
  await page.fill('#c-text', `${lines.join('\n')}\nrequest-retry: [1, 2\n`);
  await page.click('#c-save');
  await page.waitForSelector('#c-problem:not([hidden])');
  const problem = await page.textContent('#c-problem');
  const direct = await mgmt('/config.yaml', { method: 'PUT', headers: { 'Content-Type': 'application/yaml' }, body: `${lines.join('\n')}\nrequest-retry: [1, 2\n` });
  assert.ok(direct.status >= 400, `the API refuses it (${direct.status})`);
  assert.match(problem, new RegExp(`${direct.status}|line`, 'i'));
  const marked = await page.$$eval('.gutter span.err', (s) => s.map((x) => Number(x.textContent)));
  assert.equal(marked.length, 1, 'one line is marked');
  assert.ok(Math.abs(marked[0] - badLine) <= 1, `marked line ${marked[0]}, broken line ${badLine}`);
  assert.equal((await mgmt('/config.yaml')).text, before.text, 'nothing was written');
  await shot(page, 'config-error-light-desktop');

  // the fix: the broken line goes, and the existing key gets a new value
  assert.ok(lines.some((l) => /^request-retry: /.test(l)), 'the config has request-retry');
  await page.fill('#c-text', `${lines.map((l) => (/^request-retry: /.test(l) ? 'request-retry: 2' : l)).join('\n')}\n`);
  await page.click('#c-save');
  await page.waitForSelector('#c-result.ok');
  assert.ok(await page.isHidden('#c-problem'));
  const after = await mgmt('/config');
  assert.equal(after.json['request-retry'], 2);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('the installed binary serves the panel from <prefix>/share/cliproxy/panel', { skip, ...T() }, async () => {
  const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-panel-install-'));
  try {
    const r = spawnSync('cmake', ['--install', path.dirname(BIN), '--prefix', prefix], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.ok(fs.existsSync(path.join(prefix, 'share/cliproxy/panel/management.html')));
    const port = await freePort();
    const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-panel-cwd-'));
    const cfg = path.join(cwd, 'config.yaml');
    fs.writeFileSync(cfg, `host: "127.0.0.1"\nport: ${port}\nauth-dir: "${cwd}/auths"\n`);
    const env = { ...process.env };
    delete env.CPX_LUA_DIR;
    delete env.CPX_PANEL_DIR;
    const { spawn } = await import('node:child_process');
    const child = spawn(path.join(prefix, 'bin/cliproxy'), ['-config', cfg], { cwd, env, stdio: 'ignore' });
    try {
      let h = { status: 0 };
      for (let i = 0; i < 100 && h.status !== 200; i++) {
        h = await healthz(`http://127.0.0.1:${port}`);
        if (h.status !== 200) await new Promise((res) => setTimeout(res, 100));
      }
      const page = await fetch(`http://127.0.0.1:${port}/management.html`);
      assert.equal(page.status, 200);
      assert.equal(await page.text(), fs.readFileSync(path.join(prefix, 'share/cliproxy/panel/management.html'), 'utf8'));
      assert.equal((await fetch(`http://127.0.0.1:${port}/panel/js/app.js`)).status, 200);
    } finally {
      child.kill('SIGTERM');
      await new Promise((res) => child.on('exit', res));
      fs.rmSync(cwd, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(prefix, { recursive: true, force: true });
  }
});

test('accounts: an OAuth login started on the page, followed to the saved file', { skip, ...T(60000) }, async () => {
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');
  await page.goto(`${proxy.url}/management.html#/accounts`);
  await page.selectOption('#a-login-provider', 'anthropic');
  await page.click('#a-login-start');
  const link = await page.waitForSelector('#a-login-url');
  const authUrl = await link.getAttribute('href');
  assert.equal(new URL(authUrl).searchParams.get('redirect_uri'), 'http://localhost:54545/callback');
  assert.match(await page.textContent('#a-login-status'), /Waiting/);
  // the user approves at the provider; the browser follows the redirect to
  // cliproxy's callback (where the fixed-port forwarder sends it)
  const state = new URL(authUrl).searchParams.get('state');
  const tab = await page.context().newPage();
  await tab.goto(`${proxy.url}/anthropic/callback?code=${approve(authUrl)}&state=${encodeURIComponent(state)}`);
  assert.match(await tab.textContent('h1'), /Login successful/);
  await tab.close();
  await page.waitForFunction(() => /Login complete: saved claude-oauth-panel@example.com.json/
    .test(document.querySelector('#a-login-status').textContent), null, { timeout: 20000 });
  await page.locator('#a-list tr', { hasText: 'claude-oauth-panel@example.com.json' }).waitFor();
  const file = path.join(proxy.dir, 'auths', 'claude-oauth-panel@example.com.json');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.equal(JSON.parse(fs.readFileSync(file, 'utf8')).access_token, 'sk-ant-oat01-PANEL-OAUTH');
  await shot(page, 'accounts-oauth-login');
  assert.deepEqual(page.problems, []);
  await page.context().close();
  assert.equal((await mgmt('/auth-files?name=claude-oauth-panel@example.com.json', { method: 'DELETE' })).status, 200);
});

test('logs: the failed-request logs are listed and one opens, by file and by request id', { skip, ...T(60000) }, async () => {
  mock.once({ error: { status: 400, message: 'panel bad request' } });
  assert.equal(await chat('panel-model', 'this request fails for the panel'), 400);
  const listed = await (async () => {
    for (;;) {
      const l = (await mgmt('/request-error-logs')).json.files;
      const f = l.find((x) => /^error-v1-chat-completions-/.test(x.name));
      if (f) return f;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const id = listed.name.match(/-([0-9a-f]{8})\.log$/)[1];
  const page = await newPage();
  await signIn(page);
  await page.waitForSelector('#d-health.ok');
  // the dashboard's uptime comes from /metrics' process_start_time_seconds
  await page.waitForFunction(() => document.querySelector('#d-uptime').textContent.trim() !== ''
    && !/not reported/.test(document.querySelector('#d-uptime').textContent));
  await page.goto(`${proxy.url}/management.html#/logs`);
  const btn = page.locator('#l-errors button', { hasText: listed.name });
  await btn.waitFor();
  await btn.click();
  await page.waitForFunction(() => /=== REQUEST INFO ===/.test(document.querySelector('#l-request-text')?.textContent || ''));
  assert.match(await page.textContent('#l-request-text'), /this request fails for the panel/);
  await page.fill('#l-open-id', id);
  await page.press('#l-open-id', 'Enter');
  await page.waitForFunction((rid) => new RegExp(`Request ID: ${rid}`).test(document.querySelector('#l-request-text')?.textContent || '')
    && /Request [0-9a-f]{8}/.test(document.querySelector('#l-request h2').textContent), id);
  const text = await page.textContent('#l-request-text');
  assert.ok(!text.includes(CLIENT_KEY) && !text.includes('up-key-a'), 'keys redacted in the page');
  await shot(page, 'logs-request-log');
  assert.deepEqual(page.problems, []);
  await page.context().close();
  await mgmt('/reset-cooldown', { method: 'POST', body: '{}' });
});

// Last: a clean stop (under ASan a leak or a memory error makes this fail).
test('the server stops cleanly after all of it', { skip, ...T() }, async () => {
  const p = proxy;
  proxy = null;
  const { code, signal } = await p.stop();
  assert.doesNotMatch(p.stderr(), /AddressSanitizer|LeakSanitizer|runtime error:/);
  assert.equal(signal, null);
  assert.equal(code, 0);
});
