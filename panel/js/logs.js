// Logs: the tail of the main log (GET /logs?after=&limit=, followed every
// few seconds when "follow" is on), filtered by level, request id and
// text; a request id opens that request's log (GET /request-log-by-id/:id);
// the error request logs (GET /request-error-logs) open the same way.
import { api, get } from './api.js';
import { h, clear, act, errorBox, table, when, bytes, confirmDialog } from './ui.js';

export const title = 'Logs';

const MAX_LINES = 5000; // what the page keeps; older lines drop off

// "[2026-12-07 07:03:01] [2d1601cd] [warn] msg" -> {time, rid, level, text}
export function parseLine(line) {
  const m = String(line).match(/^\[([^\]]+)\]\s+\[([^\]]*)\]\s+\[([a-z]+)\]\s?(.*)$/i);
  if (!m) return { time: '', rid: '', level: '', text: String(line) };
  return { time: m[1], rid: m[2] === '--------' ? '' : m[2], level: m[3].toLowerCase(), text: m[4] };
}

// The trailing lines that share the newest time stamp (a line without one
// belongs to the line before).
export function newestSecond(lines) {
  let stamp = null;
  let i = lines.length;
  while (i > 0) {
    const t = lines[i - 1].time;
    if (t) {
      if (stamp === null) stamp = t;
      else if (t !== stamp) break;
    }
    i--;
  }
  return lines.slice(i).map((l) => l.raw);
}

export function mount(root, ctx) {
  const level = h('select', { id: 'l-level' }, ['all', 'debug', 'info', 'warn', 'error'].map((v) => h('option', { value: v }, v)));
  const rid = h('input', { id: 'l-rid', type: 'text', placeholder: 'request id', spellcheck: 'false', size: 12 });
  const q = h('input', { id: 'l-q', type: 'search', placeholder: 'text', spellcheck: 'false', size: 16 });
  const follow = h('input', { id: 'l-follow', type: 'checkbox', checked: true });
  const out = h('pre', { class: 'log', id: 'l-out', tabindex: '0', 'aria-label': 'log lines' });
  const status = h('p', { class: 'result', role: 'status', id: 'l-status' });
  const reqBox = h('section', { class: 'card', id: 'l-request', hidden: true });
  const errBox = h('div', { id: 'l-errors' });
  let lines = [];
  let latest = 0; // the newest second the server reported
  let edge = [];  // the lines we hold from that second, in order

  const openRequest = async (id, path) => {
    reqBox.hidden = false;
    clear(reqBox).append(h('h2', null, `Request ${id}`), h('p', { class: 'muted' }, 'Loading…'));
    try {
      const r = await api(path || `/request-log-by-id/${encodeURIComponent(id)}`, { as: 'text' });
      clear(reqBox).append(
        h('div', { class: 'spread' }, h('h2', null, `Request ${id}`),
          h('button', { type: 'button', onclick: () => { reqBox.hidden = true; } }, 'Close')),
        h('pre', { class: 'log', id: 'l-request-text', tabindex: '0' }, typeof r.data === 'string' ? r.data : JSON.stringify(r.data, null, 2)));
    } catch (e) {
      clear(reqBox).append(h('h2', null, `Request ${id}`), errorBox(e, 'request log'));
    }
    reqBox.scrollIntoView({ block: 'nearest' });
  };

  const draw = () => {
    const lv = level.value, id = rid.value.trim(), text = q.value.trim().toLowerCase();
    const shown = lines.filter((l) => (lv === 'all' || l.level === lv) && (!id || l.rid.startsWith(id))
      && (!text || l.raw.toLowerCase().includes(text)));
    clear(out);
    if (!shown.length) out.append(lines.length ? 'No line matches the filters.' : 'No log lines.');
    for (const l of shown.slice(-1000)) {
      out.append(h('span', { class: `logline lv-${l.level}` },
        l.time ? `[${l.time}] [` : '',
        l.rid ? h('button', { type: 'button', class: 'rid', title: 'Open this request', onclick: () => openRequest(l.rid) }, l.rid) : (l.time ? '--------' : ''),
        l.time ? `] [${l.level}] ` : '', l.text, '\n'));
    }
    status.className = 'result muted';
    status.textContent = `${shown.length} of ${lines.length} lines${shown.length > 1000 ? ' (the last 1000 shown)' : ''}`;
    if (follow.checked) out.scrollTop = out.scrollHeight;
  };

  // `after` is in whole seconds, so lines written later in the newest
  // second would be missed: ask from the second before and drop what we
  // already hold (the file only grows, so those come first, in order).
  const tail = async (reset) => {
    try {
      const incremental = !reset && latest > 0;
      const data = await get('/logs', incremental ? { after: latest - 1 } : { limit: 1000 });
      let got = (data && data.lines) || [];
      if (incremental) {
        let i = 0;
        while (i < got.length && i < edge.length && got[i] === edge[i]) i++;
        got = got.slice(i);
      } else {
        lines = [];
      }
      for (const raw of got) lines.push({ ...parseLine(raw), raw });
      if (lines.length > MAX_LINES) lines = lines.slice(-MAX_LINES);
      if (data && data['latest-timestamp']) latest = data['latest-timestamp'];
      edge = newestSecond(lines);
      draw();
    } catch (e) {
      status.className = 'result error';
      status.textContent = `Log tail failed: ${e.status || ''} ${e.message}`;
    }
  };

  const loadErrors = async () => {
    try {
      const data = await get('/request-error-logs');
      const files = (data && data.files) || [];
      clear(errBox).append(table([
        { label: 'File', value: (f) => h('button', { type: 'button', class: 'small', onclick: () => openRequest(f.name, `/request-error-logs/${encodeURIComponent(f.name)}`) }, f.name) },
        { label: 'Size', value: (f) => bytes(f.size), num: true },
        { label: 'Modified', value: (f) => when(f.modified) },
      ], files, 'No failed request logs.'));
    } catch (e) {
      clear(errBox).append(errorBox(e, 'request-error-logs'));
    }
  };

  const openForm = h('form', { class: 'row' },
    h('label', { for: 'l-open-id', class: 'inline' }, 'Open request'),
    h('input', { id: 'l-open-id', type: 'text', placeholder: 'request id', spellcheck: 'false', size: 12 }),
    h('button', { type: 'submit' }, 'Open'));
  openForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = openForm.querySelector('input').value.trim();
    if (id) openRequest(id);
  });
  for (const el of [level, rid, q]) el.addEventListener('input', draw);

  root.append(
    h('div', { class: 'spread' }, h('h1', null, 'Logs'),
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: () => tail(true) }, 'Reload'),
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!(await confirmDialog('Clear the log files on the server?', 'Clear'))) return;
          if (await act('Clear logs', () => api('/logs', { method: 'DELETE' }).then((r) => `Logs cleared${r.data && r.data.removed !== undefined ? ` (${r.data.removed} removed)` : ''}`), status)) tail(true);
        } }, 'Clear'))),
    h('section', { class: 'card' },
      h('div', { class: 'row' },
        h('label', { for: 'l-level', class: 'inline' }, 'Level'), level,
        h('label', { for: 'l-rid', class: 'inline' }, 'Request id'), rid,
        h('label', { for: 'l-q', class: 'inline' }, 'Text'), q,
        h('label', { class: 'inline' }, follow, 'Follow')),
      status, out),
    reqBox,
    h('section', { class: 'card' }, h('h2', null, 'Open one request'), openForm),
    h('section', { class: 'card' }, h('h2', null, 'Failed request logs'), errBox));
  tail(true);
  loadErrors();
  ctx.every(3000, () => { if (follow.checked) tail(false); });
}
