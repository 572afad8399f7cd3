// The management API client. The key lives in this tab's sessionStorage
// (never localStorage, never a cookie) and goes out as a Bearer token.
// Every failure becomes an ApiError whose message is the API's own error
// text, so each page can show exactly what the server said.

const KEY_NAME = 'cliproxy.management-key';
const BASE = '/v0/management';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let lastVersion = '';
const listeners = new Set();

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

// fn(status) runs on every 401 (a key that stopped working).
export function onUnauthorized(fn) {
  listeners.add(fn);
}

export function serverVersion() {
  return lastVersion;
}

// The message an error body carries, whichever envelope it uses:
// {"error":"..."}, {"error":{"message":...}}, {"message":...} or text.
export function errorText(status, body) {
  if (body && typeof body === 'object') {
    const e = body.error;
    if (typeof e === 'string' && e) return body.message && body.message !== e ? `${e}: ${body.message}` : e;
    if (e && typeof e === 'object' && e.message) return String(e.message);
    if (typeof body.message === 'string' && body.message) return body.message;
  }
  if (typeof body === 'string' && body.trim()) return body.trim().slice(0, 2000);
  return `HTTP ${status}`;
}

// Paths are under /v0/management unless opts.root (/healthz, /metrics).
function buildUrl(path, query, root) {
  let url = root ? path : BASE + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    const s = q.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  return url;
}

// api(path, {method, query, body, text, headers, key, as}) -> {status, data, headers}
// body: an object (sent as JSON), a string (sent as is, with opts.type),
// or FormData. as: 'text' returns the body as text whatever its type.
export async function api(path, opts = {}) {
  const key = opts.key !== undefined ? opts.key : getKey();
  const headers = { ...(opts.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  let body = opts.body;
  if (body !== undefined && !(body instanceof FormData) && typeof body !== 'string') {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(body);
  } else if (typeof body === 'string' && opts.type) {
    headers['Content-Type'] = opts.type;
  }
  let res;
  try {
    res = await fetch(buildUrl(path, opts.query, opts.root), {
      method: opts.method || 'GET', headers, body, cache: 'no-store', credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach the server: ${e.message}`);
  }
  const v = res.headers.get('x-cpa-version');
  if (v) lastVersion = v;
  const text = await res.text();
  let data = text;
  const ct = res.headers.get('content-type') || '';
  // errors are parsed whatever was asked, so their message can be shown
  if ((opts.as !== 'text' || !res.ok) && (ct.includes('json') || /^\s*[[{]/.test(text))) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    if (res.status === 401) for (const fn of listeners) fn(res.status);
    throw new ApiError(res.status, errorText(res.status, data), data);
  }
  return { status: res.status, data, headers: res.headers };
}

export const get = (path, query, o = {}) => api(path, { ...o, query }).then((r) => r.data);

// Triggers a browser download of text (CSV, JSON, a log) built here.
export function download(name, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
