// DOM helpers and formatting shared by the pages. Everything is built with
// createElement and textContent: server data never reaches innerHTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// ---- result messages ----------------------------------------------------

export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : null }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 9000 : 4000);
  while (box.childElementCount > 5) box.firstElementChild.remove();
}

// Runs an action, shows its result (or the API's error) in the toast area
// and, when given, in a result element next to the control. Returns the
// action's value, or undefined on failure.
export async function act(label, fn, resultEl) {
  try {
    const v = await fn();
    const msg = typeof v === 'string' ? v : `${label}: done`;
    toast(msg, 'ok');
    if (resultEl) { resultEl.className = 'result ok'; resultEl.textContent = msg; }
    return v === undefined ? true : v;
  } catch (e) {
    const msg = `${label} failed: ${e.status ? `${e.status} ` : ''}${e.message}`;
    toast(msg, 'error');
    if (resultEl) { resultEl.className = 'result error'; resultEl.textContent = msg; }
    return undefined;
  }
}

export function errorBox(e, what) {
  return h('p', { class: 'error', role: 'alert' },
    `${what ? `${what}: ` : ''}${e.status ? `${e.status} ` : ''}${e.message}`);
}

// A modal confirmation (the <dialog> in management.html); resolves true/false.
export function confirmDialog(text, okLabel = 'Confirm') {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  ok.textContent = okLabel;
  return new Promise((resolve) => {
    const done = (v) => {
      ok.removeEventListener('click', yes);
      cancel.removeEventListener('click', no);
      d.removeEventListener('cancel', no);
      if (d.open) d.close();
      resolve(v);
    };
    const yes = () => done(true);
    const no = () => done(false);
    ok.addEventListener('click', yes);
    cancel.addEventListener('click', no);
    d.addEventListener('cancel', no);
    d.showModal();
    cancel.focus();
  });
}

// ---- tables ---------------------------------------------------------------

// columns: [{label, value: row -> node|string, num: bool}]
export function table(columns, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
      h('tbody', null, rows.map((r) => h('tr', null, columns.map((c) => {
        const v = c.value(r);
        return h('td', { class: c.num ? 'num' : c.cls || null }, v === undefined || v === null ? '' : v);
      }))))));
}

// ---- formatting ---------------------------------------------------------

const nf = new Intl.NumberFormat();
export const num = (n) => (typeof n === 'number' && Number.isFinite(n) ? nf.format(n) : '–');

export function duration(sec) {
  if (typeof sec !== 'number' || !Number.isFinite(sec)) return '–';
  sec = Math.max(0, Math.round(sec));
  const d = Math.floor(sec / 86400), hh = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60), s = sec % 60;
  if (d) return `${d}d ${hh}h ${m}m`;
  if (hh) return `${hh}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

// Seconds since the epoch from a number (s or ms) or an RFC 3339 string.
export function epoch(v) {
  if (v === undefined || v === null || v === '') return null;
  if (typeof v === 'number') return v > 1e12 ? v / 1000 : v;
  const t = Date.parse(v);
  if (Number.isNaN(t)) return null;
  const s = t / 1000;
  return s > 0 ? s : null; // Go's zero time
}

export function when(v) {
  const s = epoch(v);
  if (s === null) return '–';
  return new Date(s * 1000).toLocaleString();
}

export function bytes(n) {
  if (typeof n !== 'number') return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

// "sk-a…wxyz": enough to tell keys apart, not enough to use one.
export function mask(key) {
  if (typeof key !== 'string') return '';
  if (key.length <= 10) return '•'.repeat(key.length);
  return `${key.slice(0, 4)}…${key.slice(-4)}`;
}

export function badge(text, kind) {
  return h('span', { class: `badge ${kind}` }, text);
}

// A countdown to `at` (epoch s) kept live by the page's 1 s ticker.
export function countdown(at) {
  const el = h('span', { class: 'countdown mono', dataset: { until: String(at) } });
  tickCountdown(el);
  return el;
}

export function tickCountdown(el) {
  const left = Number(el.dataset.until) - Date.now() / 1000;
  el.textContent = left > 0 ? duration(left) : 'now';
  el.classList.toggle('warn', left > 0);
}

export function tickAll(root) {
  for (const el of root.querySelectorAll('.countdown')) tickCountdown(el);
}
