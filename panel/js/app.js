// The panel's shell: sign-in, hash routing (#/dashboard, #/usage, ...),
// and one page module mounted at a time. A page module exports
// `title` and `mount(root, ctx)`, which may return a cleanup function;
// ctx.every(ms, fn) registers a timer the shell stops when the page goes.
import { api, getKey, setKey, onUnauthorized, serverVersion, ApiError } from './api.js';
import { clear, tickAll } from './ui.js';
import * as dashboard from './dashboard.js';
import * as usage from './usage.js';
import * as accounts from './accounts.js';
import * as providers from './providers.js';
import * as config from './config.js';
import * as logs from './logs.js';

const pages = { dashboard, usage, accounts, providers, config, logs };

const $ = (id) => document.getElementById(id);
let cleanup = null;
let timers = [];

function stopPage() {
  for (const t of timers) clearInterval(t);
  timers = [];
  if (typeof cleanup === 'function') {
    try { cleanup(); } catch { /* a page's own cleanup failing must not stop navigation */ }
  }
  cleanup = null;
}

function showLogin(message) {
  stopPage();
  clear($('page'));
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('login-key').focus();
}

function route() {
  if (!getKey()) return showLogin();
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || 'dashboard';
  const page = pages[name] || dashboard;
  stopPage();
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${page.title} · cliproxy`;
  const root = clear($('page'));
  root.dataset.page = name;
  const ctx = {
    every(ms, fn) { timers.push(setInterval(fn, ms)); },
    version() { return serverVersion(); },
  };
  // the 1 s ticker every countdown on the page uses
  ctx.every(1000, () => tickAll(root));
  try {
    cleanup = page.mount(root, ctx);
  } catch (e) {
    root.textContent = `This page failed to start: ${e.message}`;
  }
  showVersion();
}

function showVersion() {
  const v = serverVersion();
  $('server-version').textContent = v ? `v${v.replace(/^v/, '')}` : '';
}

// Checks a key against the API before keeping it: a wrong key, a missing
// management API (404: no secret-key set) or a ban each show their message.
async function signIn(key) {
  try {
    await api('/config', { key });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      throw new Error('The management API is off on this server (404): set remote-management.secret-key '
        + 'or MANAGEMENT_PASSWORD and restart.');
    }
    throw new Error(`${e.status ? `${e.status} ` : ''}${e.message}`);
  }
  setKey(key);
}

function start() {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = $('login-key').value;
    const btn = ev.submitter || $('login-form').querySelector('button');
    btn.disabled = true;
    try {
      await signIn(key);
      $('login-key').value = '';
      route();
    } catch (e) {
      showLogin(e.message);
    } finally {
      btn.disabled = false;
    }
  });
  $('logout').addEventListener('click', () => {
    setKey('');
    showLogin();
  });
  onUnauthorized(() => {
    setKey('');
    showLogin('The management key was refused (401): sign in again.');
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
