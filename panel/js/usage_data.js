// Turns GET /v0/management/usage (CLIProxyAPI's shape: usage.apis[key]
// .models[model].details[]) into flat request records, and aggregates them
// into hourly/daily buckets and per-model/account/key totals.
import { epoch } from './ui.js';

const n = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

function tokensOf(t) {
  t = t || {};
  const input = n(t.input_tokens ?? t.input);
  const output = n(t.output_tokens ?? t.output);
  const reasoning = n(t.reasoning_tokens ?? t.reasoning);
  const cached = n(t.cached_tokens ?? t.cache_read ?? t.cached);
  const total = n(t.total_tokens ?? t.total) || input + output + reasoning;
  return { input, output, reasoning, cached, total };
}

// -> [{time (epoch s), key, model, account, latency, failed, tokens}]
export function records(body) {
  const u = (body && body.usage) || body || {};
  const out = [];
  for (const [key, api] of Object.entries(u.apis || {})) {
    for (const [model, m] of Object.entries((api && api.models) || {})) {
      for (const d of (m && m.details) || []) {
        out.push({
          time: epoch(d.timestamp),
          key,
          model,
          account: d.source || (d.auth_index !== undefined && d.auth_index !== '' ? `#${d.auth_index}` : '–'),
          latency: n(d.latency_ms),
          failed: d.failed === true,
          tokens: tokensOf(d.tokens),
        });
      }
    }
  }
  out.sort((a, b) => (a.time || 0) - (b.time || 0));
  return out;
}

export function totals(body) {
  const u = (body && body.usage) || body || {};
  return {
    requests: n(u.total_requests),
    success: n(u.success_count),
    failure: n(u.failure_count),
    tokens: n(u.total_tokens),
  };
}

const pad = (x) => String(x).padStart(2, '0');
const hourKey = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:00`;
const dayKey = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;

// Buckets of the last `count` hours or days (local time), oldest first:
// {labels, keys, ok[], failed[], input[], output[], reasoning[], cached[]}.
export function buckets(recs, unit, count, now = Date.now()) {
  const keys = [], labels = [];
  const step = unit === 'hour' ? 3600e3 : 86400e3;
  const keyOf = unit === 'hour' ? hourKey : dayKey;
  for (let i = count - 1; i >= 0; i--) {
    const d = new Date(now - i * step);
    keys.push(keyOf(d));
    labels.push(unit === 'hour' ? `${pad(d.getHours())}h` : `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`);
  }
  const index = new Map(keys.map((k, i) => [k, i]));
  const z = () => keys.map(() => 0);
  const b = { labels, keys, ok: z(), failed: z(), input: z(), output: z(), reasoning: z(), cached: z() };
  for (const r of recs) {
    if (r.time === null) continue;
    const i = index.get(keyOf(new Date(r.time * 1000)));
    if (i === undefined) continue;
    if (r.failed) b.failed[i]++;
    else b.ok[i]++;
    b.input[i] += r.tokens.input;
    b.output[i] += r.tokens.output;
    b.reasoning[i] += r.tokens.reasoning;
    b.cached[i] += r.tokens.cached;
  }
  return b;
}

// Totals per r[field]: [{name, requests, failed, tokens, input, output, latency}], busiest first.
export function groupBy(recs, field) {
  const m = new Map();
  for (const r of recs) {
    const k = r[field] || '–';
    let g = m.get(k);
    if (!g) m.set(k, (g = { name: k, requests: 0, failed: 0, tokens: 0, input: 0, output: 0, latencySum: 0 }));
    g.requests++;
    if (r.failed) g.failed++;
    g.tokens += r.tokens.total;
    g.input += r.tokens.input;
    g.output += r.tokens.output;
    g.latencySum += r.latency;
  }
  return [...m.values()]
    .map((g) => ({ ...g, latency: g.requests ? g.latencySum / g.requests : 0 }))
    .sort((a, b) => b.requests - a.requests || a.name.localeCompare(b.name));
}

function csvCell(v) {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(recs) {
  const head = ['time', 'client_key', 'model', 'account', 'latency_ms', 'failed',
    'input_tokens', 'output_tokens', 'reasoning_tokens', 'cached_tokens', 'total_tokens'];
  const lines = [head.join(',')];
  for (const r of recs) {
    lines.push([r.time === null ? '' : new Date(r.time * 1000).toISOString(), r.key, r.model, r.account,
      r.latency, r.failed, r.tokens.input, r.tokens.output, r.tokens.reasoning, r.tokens.cached, r.tokens.total]
      .map(csvCell).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}
