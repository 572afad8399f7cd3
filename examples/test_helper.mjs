// Runs an example's config.yaml against the e2e mock upstream: every
// base-url is pointed at the mock (keeping its path), `port:` is replaced
// by a free port, and `./lua` in lua.paths by the example's own lua/
// directory. Used by examples/*/example.test.mjs.
import fs from 'node:fs';
import path from 'node:path';
import { startProxy } from '../spec/e2e/lib/proxy.mjs';

export async function startExample(dir, mockUrl, { edit = (t) => t } = {}) {
  let text = fs.readFileSync(path.join(dir, 'config.yaml'), 'utf8');
  text = text.replace(/^port: \d+$/m, 'port: ${PORT}\nhost: "127.0.0.1"');
  text = text.replace(/base-url: "https?:\/\/[^/"]+([^"]*)"/g, (_, p) => `base-url: "${mockUrl}${p}"`);
  text = text.replace(/- \.\/lua\b/g, `- ${JSON.stringify(path.join(dir, 'lua'))}`);
  return startProxy({ configText: edit(text) });
}

export async function post(proxy, route, body, headers = {}) {
  const r = await fetch(proxy.url + route, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client', ...headers },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* a stream */ }
  return { status: r.status, headers: r.headers, text, json };
}

// The data lines of an SSE body, parsed ([DONE] left out).
export function sseData(text) {
  return text.split('\n').filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]')
    .map((l) => JSON.parse(l.slice(6)));
}
