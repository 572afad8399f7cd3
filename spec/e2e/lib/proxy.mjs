// Starts the real cliproxy binary on loopback with a temporary config.
//
//   const proxy = await startProxy({
//     apiKeys: ['sk-client'],
//     openaiCompat: [{ name: 'mock', baseUrl: `${mock.url}/v1`, keys: ['up-a', 'up-b'],
//                      headers: { 'X-Entry': 'mock' }, models: [{ name: 'up-model', alias: 'm' }] }],
//     extra: { 'request-retry': 0 },          // any further top-level keys
//   });
//   proxy.url, proxy.port, proxy.pid, proxy.rssKiB(), proxy.stdout(), proxy.stderr()
//   const { code, signal } = await proxy.stop();
//   startProxy({ configText }) writes configText as is, with ${PORT} and ${AUTH_DIR} filled in.
//
// The binary is $CPX_BIN, else ../../build/cliproxy relative to spec/e2e. It runs
// as `cliproxy --config <file>` in the proxy's own temporary directory (the
// config's, where its logs/ go too), never in the source tree.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(here, '..');
export const ROOT = process.env.CPX_ROOT || path.resolve(E2E_DIR, '../..');
export const BIN = process.env.CPX_BIN || path.resolve(E2E_DIR, '../../build/cliproxy');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The working directory of every other process a test file starts (CLIs,
// `cliproxy check`, a proxy started by hand): a scratch directory of this
// test process, removed at exit, so whatever they write relative to their
// working directory stays out of the repository (ctest's repo_clean check
// fails a run that leaves anything there).
export const SCRATCH = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-e2e-cwd-'));

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// A small block-style YAML writer. Strings are double-quoted with JSON escapes,
// which YAML's double-quoted scalars accept.
export function toYaml(v, indent = '') {
  const scalar = (x) => {
    if (x === null || x === undefined) return 'null';
    if (typeof x === 'string') return JSON.stringify(x);
    return String(x);
  };
  const isObj = (x) => x && typeof x === 'object';
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((item) => {
      if (isObj(item) && !Array.isArray(item) && Object.keys(item).length) {
        const body = toYaml(item, indent + '  ');
        return `${indent}- ${body.slice(indent.length + 2)}`;
      }
      return `${indent}- ${isObj(item) ? toYaml(item, indent + '  ').trimStart() : scalar(item)}`;
    }).join('\n');
  }
  if (isObj(v)) {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const x = v[k];
      const key = /^[A-Za-z0-9_.-]+$/.test(k) ? k : JSON.stringify(k);
      if (isObj(x) && (Array.isArray(x) ? x.length : Object.keys(x).length))
        return `${indent}${key}:\n${toYaml(x, indent + '  ')}`;
      return `${indent}${key}: ${isObj(x) ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
    }).join('\n');
  }
  return scalar(v);
}

export function buildConfig({ port, apiKeys = [], openaiCompat = [], authDir, extra = {} }) {
  const cfg = {
    host: '127.0.0.1',
    port,
    'auth-dir': authDir,
    debug: false,
    'api-keys': apiKeys,
    'request-retry': 0,
    'max-retry-interval': 0,
    'openai-compatibility': openaiCompat.map((e) => {
      const o = { name: e.name, 'base-url': e.baseUrl };
      if (e.headers) o.headers = e.headers;
      o['api-key-entries'] = (e.keys || []).map((k) => (typeof k === 'string' ? { 'api-key': k } : { 'api-key': k.key, 'proxy-url': k.proxyUrl }));
      o.models = (e.models || []).map((m) => (typeof m === 'string' ? { name: m, alias: m } : m));
      return o;
    }),
    ...extra,
  };
  return toYaml(cfg) + '\n';
}

function readRssKiB(pid) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export async function healthz(url, timeoutMs = 1000) {
  try {
    const r = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await r.text();
    return { status: r.status, text };
  } catch (e) {
    return { status: 0, text: String(e) };
  }
}

const running = new Set();
process.on('exit', () => {
  for (const c of running) try { c.kill('SIGKILL'); } catch {}
  fs.rmSync(SCRATCH, { recursive: true, force: true });
});

export async function startProxy(opts = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`cliproxy binary not found at ${BIN} (build it, or set CPX_BIN)`);
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(opts);
    } catch (e) {
      lastErr = e;
      if (!/address|EADDRINUSE|bind/i.test(String(e.message))) break; // retry only port races
    }
  }
  throw lastErr;
}

async function startOnce({ startTimeoutMs = 10000, env = {}, configText, ...cfg }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-e2e-'));
  const authDir = path.join(dir, 'auths');
  fs.mkdirSync(authDir, { mode: 0o700 });
  const port = await freePort();
  const configPath = path.join(dir, 'config.yaml');
  fs.writeFileSync(configPath, configText
    ? configText.replaceAll('${PORT}', port).replaceAll('${AUTH_DIR}', authDir)
    : buildConfig({ ...cfg, port, authDir }));

  let out = '';
  let err = '';
  const child = spawn(BIN, ['--config', configPath], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const cap = 4 << 20; // keep at most 4 MiB of each stream
  child.stdout.on('data', (d) => { if (out.length < cap) out += d; });
  child.stderr.on('data', (d) => { if (err.length < cap) err += d; });
  let exited = null;
  const exitP = new Promise((r) => child.on('exit', (code, signal) => { exited = { code, signal }; running.delete(child); r(exited); }));
  const spawnErr = new Promise((_, rej) => child.on('error', rej));
  spawnErr.catch(() => {});

  const url = `http://127.0.0.1:${port}`;
  const end = Date.now() + startTimeoutMs;
  let last = null;
  for (;;) {
    if (exited) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`cliproxy exited during start-up (code ${exited.code}, signal ${exited.signal})\n--- config\n${fs.existsSync(configPath) ? '' : ''}--- stderr\n${err}\n--- stdout\n${out}`);
    }
    last = await healthz(url, 500);
    if (last.status === 200) break;
    if (Date.now() > end) {
      child.kill('SIGKILL');
      await exitP;
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`cliproxy did not answer GET /healthz with 200 within ${startTimeoutMs} ms (last: ${last.status} ${last.text.slice(0, 200)})\n--- stderr\n${err}\n--- stdout\n${out}`);
    }
    await sleep(50);
  }
  let health;
  try { health = JSON.parse(last.text); } catch { health = null; }

  return {
    url, port, pid: child.pid, dir, configPath, health, child,
    stdout: () => out,
    stderr: () => err,
    exited: () => exited,
    rssKiB: () => readRssKiB(child.pid),
    // SIGTERM, then wait; SIGKILL after timeoutMs. Resolves { code, signal, killed }.
    async stop({ timeoutMs = 10000, keepDir = false } = {}) {
      if (!exited) {
        child.kill('SIGTERM');
        let timer;
        const t = await Promise.race([exitP, new Promise((r) => { timer = setTimeout(r, timeoutMs, null); })]);
        clearTimeout(timer);
        if (!t) {
          child.kill('SIGKILL');
          await exitP;
          exited.killed = true;
        }
      }
      // Issue 13: no key or token in any log a proxy wrote, in any test.
      const leaks = scanLogs(dir, configPath, out, err);
      if (!keepDir) fs.rmSync(dir, { recursive: true, force: true });
      if (leaks.length) throw new Error(`secrets in the proxy's logs: ${leaks.join('; ')}`);
      return exited;
    },
  };
}

// Secrets this proxy was given: the config's key, token, secret and
// password values and the credential fields of its auth-dir files (eight
// characters or more, so a placeholder like "k" cannot match by chance).
function secretsOf(dir, configPath) {
  const found = new Set();
  // (a bcrypt hash, a URL or a path is not a secret: token-url, key files)
  const add = (v) => {
    if (typeof v === 'string' && v.length >= 8 && !/^(\$2[aby]\$|https?:\/\/|\/|~)/.test(v)) found.add(v);
  };
  let text = '';
  try { text = fs.readFileSync(configPath, 'utf8'); } catch {}
  for (const m of text.matchAll(/^\s*(?:-\s*)?(?:"?[\w-]*(?:key|secret|token|password)[\w-]*"?\s*:\s*)"?([^"\s#]+)"?/gim)) add(m[1]);
  // the items of a key list (api-keys:, api-keys: [..] and "- value" lines below it)
  for (const m of text.matchAll(/^(\s*)"?api-keys"?\s*:\s*\n((?:\1\s*-\s*.*\n?)+)/gim)) {
    for (const l of m[2].matchAll(/-\s*"?([^"\s#]+)"?/g)) add(l[1]);
  }
  const auth = path.join(dir, 'auths');
  let files = [];
  try { files = fs.readdirSync(auth).filter((f) => f.endsWith('.json')); } catch {}
  for (const f of files) {
    let doc;
    try { doc = JSON.parse(fs.readFileSync(path.join(auth, f), 'utf8')); } catch { continue; }
    const walk = (o) => {
      if (!o || typeof o !== 'object') return;
      for (const [k, v] of Object.entries(o)) {
        if (typeof v === 'string' && /token|key|secret|cookie|password/i.test(k)) {
          // a PEM key: its body lines
          if (v.includes('PRIVATE KEY')) v.split('\n').filter((l) => l.length >= 40).forEach(add); else add(v);
        } else walk(v);
      }
    };
    walk(doc);
  }
  return found;
}

function scanLogs(dir, configPath, out, err) {
  const secrets = secretsOf(dir, configPath);
  if (secrets.size === 0) return [];
  const texts = [['stderr', err], ['stdout', out]];
  const logs = path.join(dir, 'logs');
  try {
    for (const f of fs.readdirSync(logs)) if (f.endsWith('.log')) texts.push([`logs/${f}`, fs.readFileSync(path.join(logs, f), 'utf8')]);
  } catch {}
  const leaks = [];
  for (const s of secrets) {
    for (const [where, t] of texts) if (t.includes(s)) leaks.push(`${s.slice(0, 4)}... in ${where}`);
  }
  return leaks;
}
