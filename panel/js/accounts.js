// Accounts: the credential files in auth-dir (GET /auth-files) with status,
// cooldown, refresh state and last error; upload (multipart), download,
// delete, enable/disable, reset cooldown; and OAuth logins started here
// and followed (get-auth-status) until the credential file is saved.
import { api, get, download } from './api.js';
import { h, clear, act, errorBox, table, badge, countdown, epoch, when, bytes, confirmDialog } from './ui.js';

export const title = 'Accounts';

// The OAuth starters (CLIProxyAPI's routes) and their display names.
const LOGINS = [
  ['anthropic', 'Claude Code'], ['codex', 'Codex / ChatGPT'], ['gemini-cli', 'Gemini CLI'],
  ['antigravity', 'Antigravity'], ['qwen', 'Qwen Code'], ['iflow', 'iFlow'], ['kimi', 'Kimi'],
];

export function accountRows(data) {
  const files = Array.isArray(data) ? data : (data && (data.files || data['auth-files'])) || [];
  return files.map((f) => ({ ...f, name: f.name || f.id || '?' }));
}

// {text, kind} for an entry's status badge.
export function accountState(f) {
  if (f.disabled) return { text: 'disabled', kind: 'off' };
  const retry = epoch(f.next_retry_after);
  if (retry && retry > Date.now() / 1000) return { text: 'cooling', kind: 'warn' };
  if (f.unavailable) return { text: 'unavailable', kind: 'bad' };
  const s = String(f.status || 'active');
  const kind = /error|fail|invalid|expired/.test(s) ? 'bad' : /cool|refresh|pending|wait/.test(s) ? 'warn' : 'ok';
  return { text: s, kind };
}

// The refresh state: the entry's own fields, and `refresh` ({last_refresh,
// expires, next_due, last_error, needs_login, failures, retry_at}) when the
// server runs background refreshes.
function refreshInfo(f) {
  const r = (f.refresh && typeof f.refresh === 'object') ? f.refresh : {};
  const parts = [];
  const last = r.last_refresh || f.last_refresh;
  if (last) parts.push(`last ${when(last)}`);
  if (r.expires) parts.push(`expires ${when(r.expires)}`);
  const next = r.next_due || f.next_refresh;
  if (next) parts.push(['next in ', countdown(epoch(next))]);
  if (r.needs_login) parts.push(h('span', { class: 'bad' }, 'log in again'));
  const err = r.last_error || f.refresh_error;
  if (err) parts.push(h('span', { class: 'bad' }, `${r.failures ? `${r.failures}× ` : ''}${err}`));
  if (r.retry_at) parts.push(['retry in ', countdown(epoch(r.retry_at))]);
  return parts.length ? parts.flatMap((p, i) => (i ? [h('br'), p] : [p])) : '–';
}

// The soonest reopening, and each cooling model with its reason.
function cooldownInfo(f) {
  const nowS = Date.now() / 1000;
  const at = epoch(f.next_retry_after);
  const models = Array.isArray(f.cooldowns) ? f.cooldowns : [];
  if (!(at && at > nowS) && !models.length) return '–';
  return [at && at > nowS ? countdown(at) : null,
    models.map((c) => h('div', { class: 'muted' }, `${c.model}${c.reason ? ` (${c.reason})` : ''}: `,
      countdown(epoch(c.next_retry_after) || nowS + (c.remaining_seconds || 0))))];
}

function uploadForm(reload) {
  const input = h('input', { type: 'file', id: 'a-upload-file', multiple: true, accept: '.json,application/json' });
  const result = h('p', { class: 'result', role: 'status', id: 'a-upload-result' });
  const form = h('form', { class: 'row', id: 'a-upload' },
    h('label', { for: 'a-upload-file', class: 'inline' }, 'Credential files (JSON)'), input,
    h('button', { type: 'submit', class: 'primary' }, 'Upload'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!input.files.length) { result.className = 'result error'; result.textContent = 'Choose one or more files first.'; return; }
    const fd = new FormData();
    for (const f of input.files) fd.append('file', f, f.name);
    const n = input.files.length;
    const ok = await act('Upload', async () => {
      const r = await api('/auth-files', { method: 'POST', body: fd });
      const failed = r.data && Array.isArray(r.data.failed) ? r.data.failed : [];
      if (failed.length) {
        const err = new Error(failed.map((x) => `${x.name || x.file || '?'}: ${x.error || x.message || 'failed'}`).join('; '));
        err.status = r.status;
        throw err;
      }
      return `Uploaded ${n} file${n > 1 ? 's' : ''}`;
    }, result);
    if (ok) { input.value = ''; reload(); }
  });
  return h('section', { class: 'card' }, h('h2', null, 'Upload'), form, result);
}

function loginCard(reload) {
  const sel = h('select', { id: 'a-login-provider' }, LOGINS.map(([id, name]) => h('option', { value: id }, name)));
  const out = h('div', { id: 'a-login-out', role: 'status' });
  let timer = null;
  const stop = () => { if (timer) clearInterval(timer); timer = null; };
  const start = async () => {
    stop();
    const p = sel.value;
    clear(out).append(h('p', { class: 'muted' }, 'Starting…'));
    let r;
    try {
      r = await get(`/${p}-auth-url`, { is_webui: 'true' });
    } catch (e) {
      clear(out).append(errorBox(e, 'login'));
      return;
    }
    const url = r.url || r.verification_uri || r.verification_url;
    const state = r.state;
    const status = h('p', { class: 'muted', id: 'a-login-status' }, 'Waiting for the login to finish…');
    const pasted = h('input', { type: 'url', placeholder: 'http://localhost:…/callback?code=…', id: 'a-login-paste' });
    const pasteResult = h('p', { class: 'result' });
    const pasteForm = h('form', { class: 'row' },
      h('label', { for: 'a-login-paste', class: 'inline' }, 'Or paste the redirect URL'), pasted,
      h('button', { type: 'submit' }, 'Submit'));
    pasteForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act('Callback', () => api('/oauth-callback', { method: 'POST', body: { provider: p, redirect_url: pasted.value, state } }), pasteResult);
    });
    clear(out).append(
      url ? h('p', null, 'Open this link, sign in, and come back: ', h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', id: 'a-login-url' }, url)) : null,
      r.user_code ? h('p', null, 'Code: ', h('code', null, r.user_code)) : null,
      status, pasteForm, pasteResult);
    if (!state) { status.textContent = 'The server gave no state to follow.'; return; }
    const poll = async () => {
      try {
        const s = await get('/get-auth-status', { state });
        if (s.status === 'ok') {
          stop();
          status.className = 'ok';
          status.textContent = `Login complete${s.file || s.name ? `: saved ${s.file || s.name}` : ''}.`;
          reload();
        } else if (s.status === 'error') {
          stop();
          status.className = 'error';
          status.textContent = `Login failed: ${s.error || 'unknown error'}`;
        }
      } catch (e) {
        stop();
        status.className = 'error';
        status.textContent = `Login status failed: ${e.status || ''} ${e.message}`;
      }
    };
    timer = setInterval(poll, 2000);
  };
  return {
    node: h('section', { class: 'card' }, h('h2', null, 'OAuth login'),
      h('div', { class: 'row' }, h('label', { for: 'a-login-provider', class: 'inline' }, 'Provider'), sel,
        h('button', { type: 'button', class: 'primary', id: 'a-login-start', onclick: start }, 'Start login')), out),
    stop,
  };
}

export function mount(root, ctx) {
  const list = h('div', { id: 'a-list' }, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('p', { class: 'result', role: 'status', id: 'a-result' });
  const load = async () => {
    let rows;
    try {
      rows = accountRows(await get('/auth-files'));
    } catch (e) {
      clear(list).append(errorBox(e, 'auth-files'));
      return;
    }
    clear(list).append(table([
      { label: 'Name', value: (f) => h('span', { class: 'mono' }, f.name) },
      { label: 'Provider', value: (f) => f.provider || f.type || '–' },
      { label: 'Account', value: (f) => f.email || f.account || f.label || '–' },
      { label: 'Status', value: (f) => { const s = accountState(f); return [badge(s.text, s.kind), f.status_message ? h('div', { class: 'muted' }, f.status_message) : null]; } },
      { label: 'Cooldown', cls: 'cooldown', value: cooldownInfo },
      { label: 'Refresh', cls: 'refresh', value: refreshInfo },
      { label: 'Size', value: (f) => bytes(f.size), num: true },
      { label: 'Actions', cls: 'actions', value: (f) => [
        h('button', { type: 'button', class: 'small', 'data-action': 'toggle', 'aria-label': `${f.disabled ? 'Enable' : 'Disable'} ${f.name}`,
          onclick: async () => { if (await act(f.disabled ? 'Enable' : 'Disable', () => api('/auth-files/status', { method: 'PATCH', body: { name: f.name, disabled: !f.disabled } }).then(() => `${f.disabled ? 'Enabled' : 'Disabled'} ${f.name}`), result)) load(); } },
        f.disabled ? 'Enable' : 'Disable'),
        h('button', { type: 'button', class: 'small', 'data-action': 'reset', 'aria-label': `Reset cooldown of ${f.name}`,
          onclick: async () => { if (await act('Reset cooldown', () => api('/reset-cooldown', { method: 'POST', body: { account: f.name } }).then((r) => `Cooldown reset for ${f.name}${r.data && r.data.cleared !== undefined ? ` (${r.data.cleared} cleared)` : ''}`), result)) load(); } },
        'Reset cooldown'),
        h('button', { type: 'button', class: 'small', 'data-action': 'download', 'aria-label': `Download ${f.name}`,
          onclick: () => act('Download', async () => { const r = await api('/auth-files/download', { query: { name: f.name }, as: 'text' }); download(f.name, r.data, 'application/json'); return `Downloaded ${f.name}`; }, result) },
        'Download'),
        h('button', { type: 'button', class: 'small danger', 'data-action': 'delete', 'aria-label': `Delete ${f.name}`,
          onclick: async () => {
            if (!(await confirmDialog(`Delete ${f.name} from auth-dir? This cannot be undone.`, 'Delete'))) return;
            if (await act('Delete', () => api('/auth-files', { method: 'DELETE', query: { name: f.name } }).then(() => `Deleted ${f.name}`), result)) load();
          } }, 'Delete'),
      ] },
    ], rows, 'No credential files in auth-dir yet: upload one or start a login.'));
  };
  const login = loginCard(load);
  root.append(
    h('div', { class: 'spread' }, h('h1', null, 'Accounts'),
      h('button', { type: 'button', onclick: load }, 'Refresh')),
    h('section', { class: 'card' }, h('h2', null, 'Credential files'), result, list),
    h('div', { class: 'grid' }, uploadForm(load), login.node));
  load();
  ctx.every(10000, load);
  return login.stop;
}
