// Usage: requests and tokens per hour (last 24 h) and per day (last 14
// days), by model, by account and by client key, as SVG charts; a table of
// the groups; CSV export of every request record, and the server's own
// JSON export.
import { api, get, download } from './api.js';
import { h, clear, num, errorBox, table, act } from './ui.js';
import { bars, ranking } from './chart.js';
import { records, totals, buckets, groupBy, toCsv } from './usage_data.js';

export const title = 'Usage';

function chartCard(titleText, node, id) {
  return h('section', { class: 'card', id }, h('h2', null, titleText), node);
}

function render(box, body) {
  const recs = records(body);
  const t = totals(body);
  const hours = buckets(recs, 'hour', 24);
  const days = buckets(recs, 'day', 14);
  const tokenSeries = (b) => [
    { name: 'input', values: b.input }, { name: 'output', values: b.output },
    { name: 'reasoning', values: b.reasoning }, { name: 'cached', values: b.cached }];
  const reqSeries = (b) => [{ name: 'ok', values: b.ok }, { name: 'failed', values: b.failed }];
  const byModel = groupBy(recs, 'model');
  const byAccount = groupBy(recs, 'account');
  const byKey = groupBy(recs, 'key');
  const rank = (groups, label) => (groups.length
    ? ranking({ items: groups.slice(0, 12).map((g) => ({ name: g.name, value: g.requests })), label })
    : h('p', { class: 'empty' }, 'No requests recorded yet.'));
  const groupTable = (groups, what) => table([
    { label: what, value: (g) => g.name },
    { label: 'Requests', value: (g) => num(g.requests), num: true },
    { label: 'Failed', value: (g) => num(g.failed), num: true },
    { label: 'Input tokens', value: (g) => num(g.input), num: true },
    { label: 'Output tokens', value: (g) => num(g.output), num: true },
    { label: 'Total tokens', value: (g) => num(g.tokens), num: true },
    { label: 'Avg latency', value: (g) => `${num(Math.round(g.latency))} ms`, num: true },
  ], groups, 'No requests recorded yet.');

  clear(box).append(
    h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('div', { class: 'label' }, 'Requests'), h('div', { class: 'value', id: 'u-total' }, num(t.requests || recs.length))),
      h('div', { class: 'stat' }, h('div', { class: 'label' }, 'Succeeded'), h('div', { class: 'value ok' }, num(t.success))),
      h('div', { class: 'stat' }, h('div', { class: 'label' }, 'Failed'), h('div', { class: 'value bad' }, num(t.failure))),
      h('div', { class: 'stat' }, h('div', { class: 'label' }, 'Tokens'), h('div', { class: 'value' }, num(t.tokens)))),
    h('div', { class: 'grid charts' },
      chartCard('Requests per hour (24 h)', bars({ labels: hours.labels, series: reqSeries(hours), label: 'requests per hour' }), 'u-req-hour'),
      chartCard('Tokens per hour (24 h)', bars({ labels: hours.labels, series: tokenSeries(hours), label: 'tokens per hour' }), 'u-tok-hour'),
      chartCard('Requests per day (14 days)', bars({ labels: days.labels, series: reqSeries(days), label: 'requests per day' }), 'u-req-day'),
      chartCard('Tokens per day (14 days)', bars({ labels: days.labels, series: tokenSeries(days), label: 'tokens per day' }), 'u-tok-day'),
      chartCard('By model', rank(byModel, 'requests by model'), 'u-by-model'),
      chartCard('By account', rank(byAccount, 'requests by account'), 'u-by-account'),
      chartCard('By client key', rank(byKey, 'requests by client key'), 'u-by-key')),
    h('section', { class: 'card' }, h('h2', null, 'By model'), groupTable(byModel, 'Model')),
    h('section', { class: 'card' }, h('h2', null, 'By account'), groupTable(byAccount, 'Account')),
    h('section', { class: 'card' }, h('h2', null, 'By client key'), groupTable(byKey, 'Client key')));
  return recs;
}

export function mount(root, ctx) {
  const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('p', { class: 'result', role: 'status' });
  let recs = [];
  const load = async () => {
    try {
      recs = render(box, await get('/usage'));
    } catch (e) {
      clear(box).append(errorBox(e, 'usage'));
    }
  };
  root.append(
    h('div', { class: 'spread' }, h('h1', null, 'Usage'),
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: load }, 'Refresh'),
        h('button', { type: 'button', id: 'u-csv', onclick: () => act('CSV export', async () => {
          download(`cliproxy-usage-${new Date().toISOString().slice(0, 10)}.csv`, toCsv(recs), 'text/csv');
          return `CSV export: ${recs.length} request records`;
        }, result) }, 'Export CSV'),
        h('button', { type: 'button', onclick: () => act('JSON export', async () => {
          const r = await api('/usage/export', { as: 'text' });
          download(`cliproxy-usage-${new Date().toISOString().slice(0, 10)}.json`, r.data, 'application/json');
          return 'JSON export downloaded';
        }, result) }, 'Export JSON'))),
    result, box);
  load();
  ctx.every(30000, load);
}
