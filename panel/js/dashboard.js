// Dashboard: health, version, uptime, the last hour's requests and errors,
// in-flight streams, and every account with its status and a live
// cooldown countdown. Each tile shows its own data or its own error.
import { api, get } from './api.js';
import { h, clear, num, duration, errorBox, countdown, badge, epoch, table } from './ui.js';
import { records } from './usage_data.js';
import { accountState, accountRows } from './accounts.js';

export const title = 'Dashboard';

function stat(label, id) {
  return h('div', { class: 'stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value', id }, '…'));
}

function set(root, id, value, cls) {
  const el = root.querySelector(`#${id}`);
  if (!el) return;
  el.textContent = value;
  el.className = `value ${cls || ''}`;
}

// Prometheus text -> {name: value} for unlabelled samples, and sums for labelled ones.
export function parseMetrics(text) {
  const out = {};
  for (const line of String(text).split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    out[m[1]] = (out[m[1]] || 0) + v;
  }
  return out;
}

function pick(metrics, patterns) {
  for (const p of patterns) {
    const k = Object.keys(metrics).find((name) => p.test(name));
    if (k) return metrics[k];
  }
  return undefined;
}

async function loadHealth(root) {
  try {
    const r = await api('/healthz', { key: '', root: true });
    set(root, 'd-health', r.data && r.data.status === 'ok' ? 'ok' : String(r.data), 'ok');
  } catch (e) {
    set(root, 'd-health', `${e.status || ''} ${e.message}`.trim(), 'bad');
  }
}

async function loadMetrics(root, ctx) {
  try {
    const text = await get('/metrics', null, { as: 'text', root: true });
    const m = parseMetrics(text);
    const start = pick(m, [/^process_start_time_seconds$/, /start_time_seconds$/]);
    const up = pick(m, [/uptime_seconds$/]);
    const uptime = up !== undefined ? up : start !== undefined ? Date.now() / 1000 - start : undefined;
    set(root, 'd-uptime', uptime !== undefined ? duration(uptime) : 'not reported');
    const streams = pick(m, [/in_?flight_streams/, /streams_in_?flight/, /active_streams/]);
    set(root, 'd-streams', streams !== undefined ? num(streams) : 'not reported');
  } catch (e) {
    const msg = `not available: /metrics answered ${e.status || ''} ${e.message}`.replace('  ', ' ');
    set(root, 'd-uptime', msg, 'muted small');
    set(root, 'd-streams', msg, 'muted small');
  }
  const v = ctx.version();
  set(root, 'd-version', v || 'unknown');
}

async function loadUsage(root) {
  try {
    const body = await get('/usage');
    const since = Date.now() / 1000 - 3600;
    const recent = records(body).filter((r) => r.time !== null && r.time >= since);
    const failed = recent.filter((r) => r.failed).length;
    set(root, 'd-requests', num(recent.length));
    set(root, 'd-errors', num(failed), failed ? 'bad' : 'ok');
  } catch (e) {
    set(root, 'd-requests', `${e.status || ''} ${e.message}`.trim(), 'bad small');
    set(root, 'd-errors', '–');
  }
}

async function loadAccounts(box) {
  try {
    const data = await get('/auth-files');
    const rows = accountRows(data);
    clear(box).append(table([
      { label: 'Account', value: (r) => r.name },
      { label: 'Provider', value: (r) => r.provider || r.type || '–' },
      { label: 'Status', value: (r) => { const s = accountState(r); return badge(s.text, s.kind); } },
      { label: 'Cooldown', value: (r) => { const at = epoch(r.next_retry_after); return at && at > Date.now() / 1000 ? countdown(at) : '–'; } },
      { label: 'Message', value: (r) => r.status_message || '' },
    ], rows, 'No credential files in auth-dir yet.'));
  } catch (e) {
    clear(box).append(errorBox(e, 'accounts'));
  }
}

export function mount(root, ctx) {
  const accounts = h('div', { id: 'd-accounts' }, h('p', { class: 'muted' }, 'Loading…'));
  root.append(
    h('div', { class: 'spread' }, h('h1', null, 'Dashboard'),
      h('button', { type: 'button', onclick: () => refresh() }, 'Refresh')),
    h('div', { class: 'stats' },
      stat('Health', 'd-health'), stat('Version', 'd-version'), stat('Uptime', 'd-uptime'),
      stat('Requests, last hour', 'd-requests'), stat('Errors, last hour', 'd-errors'),
      stat('Streams in flight', 'd-streams')),
    h('section', { class: 'card' }, h('h2', null, 'Accounts'), accounts));
  const refresh = () => Promise.all([loadHealth(root), loadMetrics(root, ctx), loadUsage(root), loadAccounts(accounts)]);
  refresh();
  ctx.every(15000, refresh);
}
