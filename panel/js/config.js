// Config editor: config.yaml as text (GET/PUT /config.yaml). A refused
// save shows the server's message, and the line it names is marked in the
// gutter and selected in the text. Ctrl/Cmd+S saves.
import { api } from './api.js';
import { h, clear, act } from './ui.js';

export const title = 'Config';

// The line a validation message points at ("line 12", "12:5", "at 12"), or null.
export function errorLine(message) {
  const m = String(message).match(/\bline[: ]+(\d+)/i) || String(message).match(/:(\d+):\d+\b/)
    || String(message).match(/\bat (\d+)\b/);
  return m ? Number(m[1]) : null;
}

export function mount(root) {
  const area = h('textarea', { class: 'code', id: 'c-text', spellcheck: 'false', autocomplete: 'off',
    'aria-label': 'config.yaml', wrap: 'off' });
  const gutter = h('pre', { class: 'gutter', 'aria-hidden': 'true' });
  const problem = h('div', { class: 'problem', id: 'c-problem', role: 'alert', hidden: true });
  const result = h('p', { class: 'result', role: 'status', id: 'c-result' });
  let errLine = null;

  const drawGutter = () => {
    const n = area.value.split('\n').length;
    clear(gutter);
    for (let i = 1; i <= n; i++) gutter.append(h('span', { class: i === errLine ? 'err' : null }, String(i)));
    gutter.scrollTop = area.scrollTop;
  };
  area.addEventListener('input', drawGutter);
  area.addEventListener('scroll', () => { gutter.scrollTop = area.scrollTop; });

  const markError = (msg) => {
    errLine = errorLine(msg);
    problem.hidden = false;
    clear(problem).append(h('strong', null, errLine ? `Line ${errLine}: ` : 'Not saved: '), msg);
    drawGutter();
    if (errLine) {
      const lines = area.value.split('\n');
      const start = lines.slice(0, errLine - 1).reduce((a, l) => a + l.length + 1, 0);
      const end = start + (lines[errLine - 1] || '').length;
      area.focus();
      area.setSelectionRange(start, end);
      const lh = parseFloat(getComputedStyle(area).lineHeight) || 20;
      area.scrollTop = Math.max(0, (errLine - 5) * lh);
    }
  };
  const clearError = () => { errLine = null; problem.hidden = true; drawGutter(); };

  const load = async () => {
    try {
      const r = await api('/config.yaml', { as: 'text' });
      area.value = r.data;
      clearError();
      result.className = 'result muted';
      result.textContent = 'Loaded from the server.';
    } catch (e) {
      result.className = 'result error';
      result.textContent = `Load failed: ${e.status || ''} ${e.message}`;
    }
  };
  const save = async () => {
    const ok = await act('Save', async () => {
      try {
        await api('/config.yaml', { method: 'PUT', body: area.value, type: 'application/yaml' });
      } catch (e) {
        markError(e.message);
        throw e;
      }
      clearError();
      return 'Saved: config.yaml written and reloaded';
    }, result);
    return ok;
  };
  area.addEventListener('keydown', (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 's') { ev.preventDefault(); save(); }
  });

  root.append(
    h('div', { class: 'spread' }, h('h1', null, 'Config'),
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: load, id: 'c-reload' }, 'Reload'),
        h('button', { type: 'button', class: 'primary', onclick: save, id: 'c-save' }, 'Save'))),
    h('p', { class: 'muted' }, 'config.yaml as the server has it. Saving validates it first; a file that does not validate is not written. Ctrl+S saves.'),
    problem, result,
    h('div', { class: 'editor' }, gutter, area));
  drawGutter();
  load();
}
