// Providers and keys: the client api-keys list and the provider key lists
// (gemini, claude, codex, vertex, openai-compatibility) of config.yaml,
// through CLIProxyAPI's list routes: GET, PUT (the whole list, re-read
// just before, to add an entry) and DELETE ?index=.
import { api, get } from './api.js';
import { h, clear, act, errorBox, table, mask, confirmDialog } from './ui.js';

export const title = 'Providers & keys';

const LISTS = [
  { key: 'gemini-api-key', title: 'Gemini API keys', fields: ['api-key', 'base-url', 'prefix', 'proxy-url'] },
  { key: 'claude-api-key', title: 'Claude API keys', fields: ['api-key', 'base-url', 'prefix', 'proxy-url'] },
  { key: 'codex-api-key', title: 'Codex API keys', fields: ['api-key', 'base-url', 'prefix', 'proxy-url'] },
  { key: 'vertex-api-key', title: 'Vertex API keys', fields: ['api-key', 'base-url', 'prefix', 'proxy-url'] },
  { key: 'openai-compatibility', title: 'OpenAI-compatible providers', fields: ['name', 'base-url', 'prefix', 'proxy-url'], json: true },
];

function listOf(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  if (data && Array.isArray(data.items)) return data.items;
  return [];
}

function apiKeysCard() {
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('p', { class: 'result', role: 'status' });
  const input = h('input', { type: 'text', id: 'p-new-api-key', placeholder: 'a new client key', spellcheck: 'false', autocomplete: 'off' });
  const load = async () => {
    let keys;
    try {
      keys = listOf(await get('/api-keys'), 'api-keys');
    } catch (e) {
      clear(body).append(errorBox(e, 'api-keys'));
      return;
    }
    clear(body).append(table([
      { label: '#', value: (r) => String(r.i), num: true },
      { label: 'Key', value: (r) => h('span', { class: 'mono' }, mask(r.k)) },
      { label: 'Actions', cls: 'actions', value: (r) => h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete client key ${r.i}`,
        onclick: async () => {
          if (!(await confirmDialog(`Delete client key ${mask(r.k)}? Clients using it stop working.`, 'Delete'))) return;
          if (await act('Delete key', () => api('/api-keys', { method: 'DELETE', query: { index: r.i } }).then(() => 'Client key deleted'), result)) load();
        } }, 'Delete') },
    ], keys.map((k, i) => ({ k, i })), 'No client keys: every request is allowed.'));
  };
  const form = h('form', { class: 'row' }, h('label', { for: 'p-new-api-key', class: 'inline' }, 'Add a key'), input,
    h('button', { type: 'submit', class: 'primary' }, 'Add'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (!v) return;
    const ok = await act('Add key', async () => {
      const cur = listOf(await get('/api-keys'), 'api-keys');
      await api('/api-keys', { method: 'PUT', body: [...cur, v] });
      return 'Client key added';
    }, result);
    if (ok) { input.value = ''; load(); }
  });
  load();
  return h('section', { class: 'card', id: 'p-api-keys' }, h('h2', null, 'Client API keys'), form, result, body);
}

function entryCard(spec) {
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('p', { class: 'result', role: 'status' });
  const load = async () => {
    let items;
    try {
      items = listOf(await get(`/${spec.key}`), spec.key);
    } catch (e) {
      clear(body).append(errorBox(e, spec.key));
      return;
    }
    const cols = spec.fields.map((f) => ({
      label: f,
      value: (r) => (f === 'api-key' ? h('span', { class: 'mono' }, mask(r.e[f])) : r.e[f] ? String(r.e[f]) : '–'),
    }));
    if (spec.json) cols.push({ label: 'keys / models', value: (r) => `${(r.e['api-key-entries'] || []).length} / ${(r.e.models || []).length}` });
    cols.push({ label: 'Actions', cls: 'actions', value: (r) => h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${spec.key} entry ${r.i}`,
      onclick: async () => {
        if (!(await confirmDialog(`Delete ${spec.title} entry ${r.i}?`, 'Delete'))) return;
        if (await act('Delete', () => api(`/${spec.key}`, { method: 'DELETE', query: { index: r.i } }).then(() => 'Entry deleted'), result)) load();
      } }, 'Delete') });
    clear(body).append(table(cols, items.map((e, i) => ({ e, i })), 'None configured.'));
  };
  // The add form: the usual fields, plus a JSON box for the rest
  // (headers, models, api-key-entries, excluded-models...).
  const inputs = {};
  const fields = h('div', { class: 'fields' }, spec.fields.map((f) => {
    const id = `p-${spec.key}-${f}`;
    inputs[f] = h('input', { id, type: 'text', spellcheck: 'false', autocomplete: 'off' });
    return h('div', null, h('label', { for: id }, f), inputs[f]);
  }));
  const extraId = `p-${spec.key}-extra`;
  const extra = h('textarea', { id: extraId, rows: 3, class: 'code', placeholder: spec.json ? '{"api-key-entries":[{"api-key":"…"}],"models":[{"name":"…","alias":"…"}]}' : '{"headers":{"X-Name":"value"}}' });
  extra.style.minHeight = '4rem';
  const form = h('form', null, h('fieldset', null, h('legend', null, 'Add an entry'), fields,
    h('label', { for: extraId }, 'More fields (JSON object, optional)'), extra,
    h('div', { class: 'row end' }, h('button', { type: 'submit', class: 'primary' }, 'Add'))));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const ok = await act('Add entry', async () => {
      const entry = {};
      for (const f of spec.fields) if (inputs[f].value.trim()) entry[f] = inputs[f].value.trim();
      if (extra.value.trim()) {
        let more;
        try { more = JSON.parse(extra.value); } catch (e) { throw new Error(`More fields is not JSON: ${e.message}`); }
        if (!more || typeof more !== 'object' || Array.isArray(more)) throw new Error('More fields must be a JSON object');
        Object.assign(entry, more);
      }
      if (!entry['api-key'] && !entry.name) throw new Error(`${spec.json ? 'name' : 'api-key'} is required`);
      const cur = listOf(await get(`/${spec.key}`), spec.key);
      await api(`/${spec.key}`, { method: 'PUT', body: [...cur, entry] });
      return `${spec.title}: entry added`;
    }, result);
    if (ok) { for (const f of spec.fields) inputs[f].value = ''; extra.value = ''; load(); }
  });
  load();
  return h('section', { class: 'card', id: `p-${spec.key}` }, h('h2', null, spec.title), result, body, form);
}

export function mount(root) {
  root.append(h('h1', null, 'Providers & keys'),
    h('p', { class: 'muted' }, 'Keys are shown masked. Every change is written to config.yaml and applied live.'),
    apiKeysCard(), ...LISTS.map(entryCard));
}
