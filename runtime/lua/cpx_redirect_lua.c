/* cpx_redirect_lua.c: `cpx.redirect`, temporary redirect listeners.
 *
 *   cpx.redirect.listen{port = n, path = "/callback", target = url,
 *                       ttl = seconds}
 *       -> true, "started" | "replaced" | nil, err, code
 *   cpx.redirect.close(port) -> true | false (none on that port)
 *   cpx.redirect.list() -> { {port, path, target, expires_in}, ... }
 *
 * A forwarder listens on 127.0.0.1:<port> only. `GET <path>` is answered
 * 302 with Location: <target>, plus "?<query>" when the request had one,
 * and the forwarder then stops; any other method or path is answered 404
 * and it keeps listening. It also stops when ttl seconds have passed, when
 * cpx.redirect.close(port) is called and when its worker drains
 * (cpx_redirect_close_loop). A listen for a port that already has a live
 * forwarder (another login for the same provider) gives it the new path,
 * target and ttl ("replaced"): the port is never bound twice. A port that
 * cannot be bound (in use by another program) gives nil, "cannot listen on
 * 127.0.0.1:<port>: <reason>", "<UV error name>" (EADDRINUSE ...).
 *
 * Why C: the listener needs the worker's event loop, and reusing
 * cpx_server (llhttp parsing, limits, timeouts, lingering close) gives it
 * the main port's hardening. No Lua value is kept: a forwarder outlives the
 * VM generation that opened it (a reload does not cut a login short); it
 * belongs to the loop it was opened on.
 *
 * Ownership: a fwd_t is malloc'd by listen and owned by its loop. It is in
 * the process-wide list (`fwds`, guarded by `mu`) while it listens; taken
 * out, its server is drained, then closed, and the fwd_t is freed in the
 * close callback of its timer, which is closed one loop iteration after
 * the server's handles so that theirs have all run. Other threads only read
 * or update the list's strings and deadline under `mu`, or set `stop`.
 * Bounded: at most CPX_REDIRECT_MAX forwarders in the process, small HTTP
 * limits and at most 32 connections each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_log.h"
#include "cpx_lua.h"
#include "cpx_redirect.h"
#include "cpx_server.h"
#include "cpx_worker.h"

#define CPX_REDIRECT_MAX 8
#define CPX_REDIRECT_MAX_PATH 256
#define CPX_REDIRECT_MAX_TARGET 2048
#define CPX_REDIRECT_MAX_TTL 3600
#define TICK_LIVE_MS 1000  /* expiry and cross-thread stop checks */
#define TICK_CLOSING_MS 50 /* waiting for the 302 to be flushed */
#define DRAIN_WAIT_NS 3000000000ull

enum { FWD_LIVE = 0, FWD_DRAINING, FWD_CLOSED };

typedef struct fwd_s {
  cpx_server_t srv; /* embedded; its handles are closed before timer's */
  uv_timer_t timer;
  uv_loop_t *loop;
  int port;
  int state;  /* loop thread only */
  int served; /* a 302 went out: stop at the next tick (loop thread) */
  int stop;   /* guarded by mu: close() from any thread */
  int live;   /* guarded by mu: listening, found by listen and close */
  uint64_t deadline_ns;                 /* guarded by mu; uv_hrtime() clock */
  uint64_t drain_started_ns;            /* loop thread */
  char path[CPX_REDIRECT_MAX_PATH];     /* guarded by mu */
  char target[CPX_REDIRECT_MAX_TARGET]; /* guarded by mu */
  struct fwd_s *next;                   /* guarded by mu */
} fwd_t;

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t mu;
/* Every forwarder not yet freed (live, draining or closing), guarded by
 * mu; a fwd_t leaves it in its timer's close callback. */
static fwd_t *fwds;
static int nfwds;

static void init_once(void) {
  uv_mutex_init(&mu);
}

static fwd_t *find_locked(int port) {
  for (fwd_t *f = fwds; f; f = f->next)
    if (f->live && f->port == port)
      return f;
  return NULL;
}

static void on_fwd_closed(uv_handle_t *h) {
  fwd_t *f = h->data, **pp;
  uv_mutex_lock(&mu);
  for (pp = &fwds; *pp && *pp != f;)
    pp = &(*pp)->next;
  if (*pp) {
    *pp = f->next;
    nfwds--;
  }
  uv_mutex_unlock(&mu);
  free(f);
}

static void on_tick(uv_timer_t *t);

/* Stops listening; the connection that carries the 302 may still flush. */
static void begin_drain(fwd_t *f, const char *why) {
  if (f->state != FWD_LIVE)
    return;
  f->state = FWD_DRAINING;
  f->drain_started_ns = uv_hrtime();
  cpx_server_drain(&f->srv);
  cpx_log_info(NULL, "oauth forwarder on 127.0.0.1:%d stopped (%s)", f->port,
               why);
  uv_timer_start(&f->timer, on_tick, TICK_CLOSING_MS, TICK_CLOSING_MS);
}

static void on_tick(uv_timer_t *t) {
  fwd_t *f = t->data;
  uint64_t now = uv_hrtime();

  switch (f->state) {
  case FWD_LIVE: {
    const char *why = NULL;
    uv_mutex_lock(&mu);
    if (f->served)
      why = "the browser came back";
    else if (f->stop)
      why = "closed";
    else if (now >= f->deadline_ns)
      why = "the login expired";
    if (why)
      f->live = 0;
    uv_mutex_unlock(&mu);
    if (why)
      begin_drain(f, why);
    break;
  }
  case FWD_DRAINING:
    if (f->srv.nconns == 0 || now - f->drain_started_ns > DRAIN_WAIT_NS) {
      cpx_server_close(&f->srv);
      f->state = FWD_CLOSED;
    }
    break;
  default:
    /* The server's handles were closed in an earlier iteration, so their
     * close callbacks have run: the memory can go now. */
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, on_fwd_closed);
    break;
  }
}

static void respond_text(cpx_request_t *r, int status, const char *text) {
  static const cpx_header_t h[] = {
      {CPX_STR("Content-Type"), CPX_STR("text/plain; charset=utf-8")},
      {CPX_STR("Cache-Control"), CPX_STR("no-store")}};
  r->close_after = 1;
  cpx_request_respond(r, status, h, 2, text, strlen(text));
}

static void on_request(cpx_server_t *srv, cpx_request_t *r) {
  fwd_t *f = srv->data;
  const char *url = r->http.buf + r->http.url_off;
  size_t ulen = r->http.url_len;
  const char *q = memchr(url, '?', ulen);
  size_t plen = q ? (size_t)(q - url) : ulen;
  char *loc;
  size_t tlen, qlen = q ? ulen - plen - 1 : 0;
  int match;

  if (f->state != FWD_LIVE || !r->http.method ||
      strcmp(r->http.method, "GET") != 0) {
    respond_text(r, 404, "not found\n");
    return;
  }
  uv_mutex_lock(&mu);
  match = strlen(f->path) == plen && memcmp(f->path, url, plen) == 0;
  tlen = strlen(f->target);
  loc = match ? malloc(tlen + qlen + 2) : NULL;
  if (loc) {
    memcpy(loc, f->target, tlen);
    if (q) {
      loc[tlen] = strchr(f->target, '?') ? '&' : '?';
      memcpy(loc + tlen + 1, q + 1, qlen);
      tlen += qlen + 1;
    }
    loc[tlen] = '\0';
  }
  uv_mutex_unlock(&mu);
  if (!match) {
    respond_text(r, 404, "not found\n");
    return;
  }
  if (!loc) {
    respond_text(r, 500, "out of memory\n");
    return;
  }
  {
    cpx_header_t h[] = {
        {CPX_STR("Location"), {loc, tlen}},
        {CPX_STR("Content-Type"), CPX_STR("text/plain; charset=utf-8")},
        {CPX_STR("Cache-Control"), CPX_STR("no-store")}};
    static const char body[] = "Redirecting to cliproxy\n";
    r->close_after = 1;
    cpx_request_respond(r, 302, h, 3, body, sizeof(body) - 1);
  }
  free(loc);
  /* One browser comes back per login: stop at the next tick, outside the
   * server's own callback. */
  f->served = 1;
  uv_timer_start(&f->timer, on_tick, 0, TICK_LIVE_MS);
}

static void server_config(cpx_server_config_t *sc, int port) {
  cpx_server_config_defaults(sc);
  snprintf(sc->host, sizeof(sc->host), "127.0.0.1");
  sc->port = port;
  sc->http.max_header_bytes = 16 * 1024;
  sc->http.max_fields = 64;
  sc->http.max_body = 4096;
  sc->header_timeout_ms = 10000;
  sc->body_timeout_ms = 10000;
  sc->keepalive_timeout_ms = 5000;
  sc->write_stall_ms = 30000;
  sc->drain_timeout_ms = 2000;
  sc->lingering_time_ms = 2000;
  sc->lingering_timeout_ms = 1000;
  sc->lingering_max_bytes = 64 * 1024;
  sc->max_connections = 32;
  sc->reuse_port = 0;
}

static uv_loop_t *current_loop(lua_State *L) {
  cpx_vm_t *vm;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  vm = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return vm && vm->worker ? vm->worker->loop : NULL;
}

static int push_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* Reads opts.<k> as a string of at most max-1 bytes; raises on misuse. */
static const char *opt_string(lua_State *L, const char *k, size_t max) {
  size_t n;
  const char *s;
  lua_getfield(L, 1, k);
  s = lua_tolstring(L, -1, &n);
  if (!s)
    luaL_error(L, "cpx.redirect.listen: opts.%s must be a string", k);
  if (n == 0 || n >= max)
    luaL_error(L, "cpx.redirect.listen: opts.%s must be 1..%d bytes", k,
               (int)max - 1);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f)
      luaL_error(L,
                 "cpx.redirect.listen: opts.%s has a space or control "
                 "character",
                 k);
  lua_pop(L, 1);
  return s; /* still referenced by opts */
}

static int l_listen(lua_State *L) {
  lua_Integer port;
  lua_Number ttl;
  const char *path, *target;
  uv_loop_t *loop;
  fwd_t *f;
  char err[512];
  int rc;

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "port");
  port = lua_tointeger(L, -1);
  if (!lua_isnumber(L, -1) || port < 1 || port > 65535)
    return luaL_error(L, "cpx.redirect.listen: opts.port must be 1..65535");
  lua_pop(L, 1);
  lua_getfield(L, 1, "ttl");
  ttl = lua_tonumber(L, -1);
  if (!lua_isnumber(L, -1) || !(ttl > 0) || ttl > CPX_REDIRECT_MAX_TTL)
    return luaL_error(L, "cpx.redirect.listen: opts.ttl must be in (0, %d]",
                      CPX_REDIRECT_MAX_TTL);
  lua_pop(L, 1);
  path = opt_string(L, "path", CPX_REDIRECT_MAX_PATH);
  target = opt_string(L, "target", CPX_REDIRECT_MAX_TARGET);
  if (path[0] != '/' || strchr(path, '?'))
    return luaL_error(L, "cpx.redirect.listen: opts.path must start with / "
                         "and have no query");
  if (strncmp(target, "http://", 7) != 0 && strncmp(target, "https://", 8) != 0)
    return luaL_error(L, "cpx.redirect.listen: opts.target must be an "
                         "http:// or https:// URL");
  loop = current_loop(L);
  if (!loop)
    return push_fail(L, "no event loop here (only a serving worker listens)",
                     "ESTATE");

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  f = find_locked((int)port);
  if (f) {
    snprintf(f->path, sizeof(f->path), "%s", path);
    snprintf(f->target, sizeof(f->target), "%s", target);
    f->deadline_ns = uv_hrtime() + (uint64_t)(ttl * 1e9);
    f->stop = 0;
    uv_mutex_unlock(&mu);
    lua_pushboolean(L, 1);
    lua_pushliteral(L, "replaced");
    return 2;
  }
  if (nfwds >= CPX_REDIRECT_MAX) {
    uv_mutex_unlock(&mu);
    return push_fail(L, "too many OAuth forwarders open", "ELIMIT");
  }
  f = calloc(1, sizeof(*f));
  if (!f) {
    uv_mutex_unlock(&mu);
    return push_fail(L, "out of memory", "ENOMEM");
  }
  f->loop = loop;
  f->port = (int)port;
  snprintf(f->path, sizeof(f->path), "%s", path);
  snprintf(f->target, sizeof(f->target), "%s", target);
  f->deadline_ns = uv_hrtime() + (uint64_t)(ttl * 1e9);
  uv_timer_init(loop, &f->timer);
  f->timer.data = f;
  {
    cpx_server_config_t sc;
    server_config(&sc, (int)port);
    cpx_server_init(&f->srv, loop, &sc, NULL);
  }
  f->srv.on_request = on_request;
  f->srv.data = f;
  /* Bound under mu, so two workers starting the same port at once cannot
   * both try: the second finds the first in the list. */
  rc = cpx_server_listen(&f->srv, err, sizeof(err));
  f->next = fwds;
  fwds = f;
  nfwds++;
  f->live = rc == 0;
  uv_mutex_unlock(&mu);
  if (rc != 0) {
    cpx_server_close(&f->srv);
    f->state = FWD_CLOSED;
    /* Never 0 ms after a close: libuv 1.44 runs a timer started inside a
     * timer callback in the same pass, and f must outlive the closing
     * phase that finishes the server's handles. */
    uv_timer_start(&f->timer, on_tick, 1, TICK_CLOSING_MS);
    return push_fail(L, err, rc < 0 && rc > -4096 ? uv_err_name(rc) : "EINVAL");
  }
  uv_timer_start(&f->timer, on_tick, TICK_LIVE_MS, TICK_LIVE_MS);
  cpx_log_info(NULL, "oauth forwarder listening on 127.0.0.1:%d%s for %.0f s",
               (int)port, path, ttl);
  lua_pushboolean(L, 1);
  lua_pushliteral(L, "started");
  return 2;
}

static int l_close(lua_State *L) {
  lua_Integer port = luaL_checkinteger(L, 1);
  uv_loop_t *loop = current_loop(L);
  fwd_t *f;
  int found = 0, here = 0;

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  f = find_locked((int)port);
  if (f) {
    found = 1;
    here = f->loop == loop;
    if (here)
      f->live = 0;
    else
      f->stop = 1; /* its own loop stops it at its next tick */
  }
  uv_mutex_unlock(&mu);
  if (here)
    begin_drain(f, "closed");
  lua_pushboolean(L, found);
  return 1;
}

static int l_list(lua_State *L) {
  uint64_t now = uv_hrtime();
  int i = 0;

  uv_once(&once, init_once);
  lua_newtable(L);
  uv_mutex_lock(&mu);
  for (fwd_t *f = fwds; f; f = f->next) {
    if (!f->live || f->stop)
      continue;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, f->port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, f->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, f->target);
    lua_setfield(L, -2, "target");
    lua_pushnumber(
        L, f->deadline_ns > now ? (double)(f->deadline_ns - now) / 1e9 : 0);
    lua_setfield(L, -2, "expires_in");
    lua_rawseti(L, -2, ++i);
  }
  uv_mutex_unlock(&mu);
  return 1;
}

void cpx_redirect_close_loop(uv_loop_t *loop) {
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  for (fwd_t *f = fwds; f; f = f->next) {
    if (f->loop != loop || f->state == FWD_CLOSED)
      continue;
    f->live = 0;
    /* The loop is about to end: no waiting for a flush. The timer frees f
     * in a later iteration than the one that closes the server's handles
     * (cpx_server_close takes no lock and calls nothing of ours). */
    cpx_server_close(&f->srv);
    f->state = FWD_CLOSED;
    uv_timer_start(&f->timer, on_tick, 1, TICK_CLOSING_MS);
  }
  uv_mutex_unlock(&mu);
}

void cpx_redirect_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"listen", l_listen}, {"close", l_close}, {"list", l_list}, {NULL, NULL}};
  cpx_lua_register_table(L, "redirect", fns);
}
