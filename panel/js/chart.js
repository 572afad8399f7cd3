// Charts as inline SVG, drawn here (no library): stacked vertical bars over
// time, and horizontal bars for rankings. Colours come from the CSS classes
// c0..c5, so light and dark mode apply to the charts too. Each bar carries
// a <title> (the tooltip) and the whole chart an aria-label.

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...kids) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const k of kids) if (k !== null && k !== undefined) el.append(k);
  return el;
}

function title(text) {
  const t = document.createElementNS(NS, 'title');
  t.textContent = text;
  return t;
}

function text(x, y, str, attrs = {}) {
  const t = s('text', { x, y, ...attrs });
  t.textContent = str;
  return t;
}

// A "nice" upper bound and tick step for max.
function scale(max) {
  if (!(max > 0)) return { top: 1, step: 1 };
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw);
  return { top: Math.ceil(max / step) * step, step };
}

export function compact(n) {
  if (Math.abs(n) >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
  if (Math.abs(n) >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return String(+n.toFixed(2));
}

function legend(series) {
  const box = document.createElement('div');
  box.className = 'legend';
  series.forEach((sr, i) => {
    const item = document.createElement('span');
    const sw = document.createElement('i');
    sw.className = `c${i % 6}`;
    item.append(sw, sr.name);
    box.append(item);
  });
  return box;
}

// bars({labels: [x...], series: [{name, values: [y...]}], label})
// -> an element holding the SVG and its legend.
export function bars({ labels, series, label, height = 190 }) {
  const W = 480, H = height, L = 40, R = 6, T = 10, B = 30;
  const n = labels.length;
  const totals = labels.map((_, i) => series.reduce((a, sr) => a + (sr.values[i] || 0), 0));
  const { top, step } = scale(Math.max(0, ...totals));
  const plotW = W - L - R, plotH = H - T - B;
  const bw = n ? plotW / n : plotW;
  const y = (v) => T + plotH - (v / top) * plotH;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label,
    preserveAspectRatio: 'xMidYMid meet' });
  const grid = s('g', { class: 'grid' });
  for (let v = 0; v <= top + 1e-9; v += step) {
    grid.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    grid.append(text(L - 6, y(v) + 4, compact(v), { 'text-anchor': 'end' }));
  }
  svg.append(grid);
  const every = Math.max(1, Math.ceil(n / 8));
  labels.forEach((lab, i) => {
    let base = 0;
    series.forEach((sr, k) => {
      const v = sr.values[i] || 0;
      if (v > 0) {
        const y0 = y(base), y1 = y(base + v);
        svg.append(s('rect', { class: `bar c${k % 6}`, x: L + i * bw + bw * 0.12, y: y1,
          width: Math.max(1, bw * 0.76), height: Math.max(0.5, y0 - y1) },
        title(`${lab} · ${sr.name}: ${v.toLocaleString()}`)));
      }
      base += v;
    });
    if (i % every === 0) svg.append(text(L + i * bw + bw / 2, H - B + 16, lab, { 'text-anchor': 'middle' }));
  });
  svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: T + plotH, y2: T + plotH }));
  const wrap = document.createElement('figure');
  wrap.className = 'chart-box';
  wrap.style.margin = '0';
  wrap.append(svg);
  if (series.length > 1) wrap.append(legend(series));
  return wrap;
}

// ranking({items: [{name, value}], label, format}) -> horizontal bars.
export function ranking({ items, label, format = (v) => v.toLocaleString() }) {
  const rowH = 26, W = 420, L = 130, R = 56;
  const H = Math.max(rowH, items.length * rowH) + 4;
  const max = Math.max(1, ...items.map((it) => it.value));
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
  items.forEach((it, i) => {
    const yy = 2 + i * rowH;
    const w = ((W - L - R) * it.value) / max;
    const name = it.name.length > 19 ? `${it.name.slice(0, 18)}…` : it.name;
    svg.append(text(L - 8, yy + 16, name, { 'text-anchor': 'end' }));
    svg.append(s('rect', { class: `bar c${i % 6}`, x: L, y: yy + 3, width: Math.max(1, w), height: rowH - 8 },
      title(`${it.name}: ${format(it.value)}`)));
    svg.append(text(L + w + 6, yy + 16, format(it.value)));
  });
  const wrap = document.createElement('figure');
  wrap.className = 'chart-box';
  wrap.style.margin = '0';
  wrap.append(svg);
  return wrap;
}
