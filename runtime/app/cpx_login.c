/* cpx_login.c: the OS side of `cliproxy login`. rt.login (Lua) runs the
 * flow in one coroutine; the `io` table it gets is made of the functions
 * below. Four of them yield (wait, sleep, request, write) and are resumed
 * from this loop's callbacks: the callback server's request, a pasted line,
 * a timer, the end of a token request, the end of the file write. Nothing here
 * blocks the loop: the browser is spawned, standard input is read as a stream,
 * the token requests go through cpx_upstream (libcurl multi on this loop), the
 * file is written in the threadpool.
 *
 * Ownership: one login_t for the whole command (cpx_login_run frees it
 * after the loop has closed every handle). The pending callback request
 * holds one reference until it is answered. */
#include "cpx_login.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "cpx_fetch_opts.h"
#include "cpx_log.h"
#include "cpx_lua.h"
#include "cpx_worker.h"
#include "cpx_store.h"
#include "cpx_upstream.h"

#define REG_LOGIN "cpx.login"
#define MAX_LINES 16         /* pasted lines queued while the flow is busy */
#define MAX_LINE 8192        /* longer lines are dropped (a URL is < 4 KiB) */
#define MAX_REQ_HEADERS 32   /* token requests carry a handful */
#define MAX_TOKEN_BODY 65536 /* a token answer is a few KiB */

enum { W_NONE = 0, W_EVENT, W_SLEEP, W_FETCH, W_WRITE };

typedef struct {
  cpx_worker_t w; /* loop, upstream client and the Lua generation */
  uv_loop_t loop;
  lua_State *co; /* the flow; anchored in the registry (co_ref) */
  int co_ref;
  int wait;    /* what the suspended flow waits for */
  int running; /* inside lua_resume */
  int ended;
  int exit_code;
  uv_timer_t timer; /* io.wait / io.sleep deadline, then the end */
  /* the callback server */
  cpx_server_t srv;  /* 127.0.0.1 */
  cpx_server_t srv6; /* ::1, when the host has it */
  int srv_init, srv6_init;
  char cb_path[512];
  int port;
  cpx_request_t *pending; /* the callback being judged: one reference */
  /* standard input */
  union {
    uv_tty_t tty;
    uv_pipe_t pipe;
  } in;
  int in_open;
  char rbuf[4096];
  char line[MAX_LINE];
  size_t linelen;
  int overlong;
  char *lines[MAX_LINES]; /* owned, FIFO */
  int lhead, lcount;
  int eof; /* input ended and the flow has not been told */
  /* the token request in flight */
  cpx_fetch_t *fetch;
  /* the browser opener */
  uv_process_t proc;
  int proc_open;
} login_t;

static void end_soon(login_t *lg);

static login_t *get_login(lua_State *L) {
  login_t *lg;
  lua_getfield(L, LUA_REGISTRYINDEX, REG_LOGIN);
  lg = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return lg;
}

static login_t *in_flow(lua_State *L, const char *fn) {
  login_t *lg = get_login(L);
  if (!lg || L != lg->co || lg->ended)
    luaL_error(L, "io.%s can only run in the login flow", fn);
  return lg;
}

/* ---- the coroutine ------------------------------------------------------ */

static void resume(login_t *lg, int nargs) {
  cpx_vm_t *vm = lg->w.vm;
  lua_State *co = lg->co;
  int saved = vm->host, rc;

  lg->wait = W_NONE;
  lg->running = 1;
  cpx_vm_enter(vm);
  vm->host = 0; /* the script runs under the memory cap */
  rc = lua_resume(co, nargs);
  vm->host = saved;
  cpx_vm_leave(vm);
  lg->running = 0;
  if (rc == LUA_YIELD)
    return;
  vm->host++;
  if (rc != 0) {
    luaL_traceback(vm->L, co, lua_tostring(co, -1), 0);
    fprintf(stderr, "cliproxy login: internal error: %s\n",
            lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
    lg->exit_code = 1;
  } else if (lua_gettop(co) < 1 || lua_isnil(co, 1) ||
             lua_toboolean(co, 1) == 0) {
    const char *msg = lua_tostring(co, 2);
    fprintf(stderr, "cliproxy login: %s\n", msg ? msg : "failed");
    lg->exit_code = 1;
  } else {
    lg->exit_code = 0;
  }
  vm->host--;
  fflush(stdout);
  lg->ended = 1;
  /* Not from inside the callback that resumed us (it may be the server's
   * request callback): the next loop turn closes everything. */
  end_soon(lg);
}

/* Pushes {kind = kind} (plus text as field `field`) onto the flow. */
static void push_event(login_t *lg, const char *kind, const char *field,
                       const char *text, size_t len) {
  lua_State *co = lg->co;
  lg->w.vm->host++;
  lua_createtable(co, 0, 2);
  lua_pushstring(co, kind);
  lua_setfield(co, -2, "kind");
  if (field) {
    lua_pushlstring(co, text, len);
    lua_setfield(co, -2, field);
  }
  lg->w.vm->host--;
}

/* A queued line or the end of input, if any, onto the flow: 1 or 0. */
static int push_queued(login_t *lg) {
  if (lg->lcount > 0) {
    char *s = lg->lines[lg->lhead];
    lg->lines[lg->lhead] = NULL;
    lg->lhead = (lg->lhead + 1) % MAX_LINES;
    lg->lcount--;
    push_event(lg, "line", "text", s, strlen(s));
    free(s);
    return 1;
  }
  if (lg->eof == 1) {
    lg->eof = 2; /* told once */
    push_event(lg, "eof", NULL, NULL, 0);
    return 1;
  }
  return 0;
}

static void on_timer(uv_timer_t *t) {
  login_t *lg = t->data;
  if (lg->wait == W_EVENT) {
    push_event(lg, "timeout", NULL, NULL, 0);
    resume(lg, 1);
  } else if (lg->wait == W_SLEEP) {
    resume(lg, 0);
  }
}

static uint64_t ms_of(lua_State *L, int idx) {
  double s = luaL_checknumber(L, idx);
  if (s < 0)
    s = 0;
  if (s > 86400)
    s = 86400;
  return (uint64_t)(s * 1000);
}

/* io.wait(seconds) -> event */
static int l_wait(lua_State *L) {
  login_t *lg = in_flow(L, "wait");
  uint64_t ms = ms_of(L, 1);
  if (push_queued(lg))
    return 1;
  uv_timer_start(&lg->timer, on_timer, ms, 0);
  lg->wait = W_EVENT;
  return lua_yield(L, 0);
}

/* io.sleep(seconds) */
static int l_sleep(lua_State *L) {
  login_t *lg = in_flow(L, "sleep");
  uv_timer_start(&lg->timer, on_timer, ms_of(L, 1), 0);
  lg->wait = W_SLEEP;
  return lua_yield(L, 0);
}

/* ---- the callback server ------------------------------------------------ */

static const cpx_header_t html_headers[] = {
    {CPX_STR("Content-Type"), CPX_STR("text/html; charset=utf-8")},
    {CPX_STR("Cache-Control"), CPX_STR("no-store")},
    {CPX_STR("Referrer-Policy"), CPX_STR("no-referrer")}};

static void answer(cpx_request_t *r, int status, const char *html, size_t len) {
  /* One answer per connection: the browser then has nothing left open
   * that would hold the end of the command. */
  r->close_after = 1;
  cpx_request_respond(r, status, html_headers,
                      sizeof(html_headers) / sizeof(html_headers[0]), html,
                      len);
}

static void answer_text(cpx_request_t *r, int status, const char *title,
                        const char *text) {
  char page[1024];
  int n = snprintf(page, sizeof(page),
                   "<!doctype html><html><head><meta charset=\"utf-8\">"
                   "<title>cliproxy: %s</title></head><body style=\""
                   "font-family:sans-serif;margin:3em\"><h1>%s</h1><p>%s</p>"
                   "</body></html>",
                   title, title, text);
  answer(r, status, page, (size_t)n < sizeof(page) ? (size_t)n : 0);
}

/* The browser comes back to localhost:<port> (or 127.0.0.1, [::1]): any other
 * Host is a page of some web site reaching loopback through DNS
 * rebinding, and must not end or steer the login. */
static int host_ok(login_t *lg, cpx_request_t *r) {
  char a[64], b[64], c[64];
  size_t n;
  const char *h = cpx_request_header(r, "host", &n);
  if (!h)
    return 0;
  snprintf(a, sizeof(a), "localhost:%d", lg->port);
  snprintf(b, sizeof(b), "127.0.0.1:%d", lg->port);
  snprintf(c, sizeof(c), "[::1]:%d", lg->port);
  return (n == strlen(a) && strncasecmp(h, a, n) == 0) ||
         (n == strlen(b) && memcmp(h, b, n) == 0) ||
         (n == strlen(c) && memcmp(h, c, n) == 0);
}

static void on_callback(cpx_server_t *srv, cpx_request_t *r) {
  login_t *lg = srv->data;
  const cpx_http_request_t *h = &r->http;
  const char *target = h->buf + h->url_off;
  const char *q = memchr(target, '?', h->url_len);
  size_t plen = q ? (size_t)(q - target) : h->url_len;

  if (!host_ok(lg, r)) {
    answer_text(r, 403, "Forbidden", "Unexpected Host header.");
    return;
  }
  if (plen != strlen(lg->cb_path) || memcmp(target, lg->cb_path, plen) != 0) {
    answer_text(r, 404, "Not found", "This is cliproxy's login callback.");
    return;
  }
  if (lg->wait != W_EVENT || lg->running || lg->pending) {
    answer_text(r, 409, "Not waiting",
                "This login is not waiting for the browser any more; see "
                "the terminal.");
    return;
  }
  uv_timer_stop(&lg->timer);
  cpx_request_ref(r);
  lg->pending = r;
  push_event(lg, "callback", "query", q ? q + 1 : "",
             q ? h->url_len - plen - 1 : 0);
  /* The flow answers (io.answer) when it knows the outcome; the end of the
   * command answers what it left open. */
  resume(lg, 1);
}

/* io.answer(status, html): the page for the callback just received. */
static int l_answer(lua_State *L) {
  login_t *lg = in_flow(L, "answer");
  int status = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *html = luaL_checklstring(L, 2, &len);
  cpx_request_t *r = lg->pending;
  if (!r) {
    lua_pushnil(L);
    lua_pushliteral(L, "no callback to answer");
    return 2;
  }
  lg->pending = NULL;
  answer(r, status >= 200 && status <= 599 ? status : 200, html, len);
  cpx_request_unref(r);
  lua_pushboolean(L, 1);
  return 1;
}

/* io.listen(port, path) -> true | nil, err, code */
static int l_listen(lua_State *L) {
  login_t *lg = in_flow(L, "listen");
  int port = (int)luaL_checkinteger(L, 1);
  const char *path = luaL_checkstring(L, 2);
  cpx_server_config_t sc;
  char err[512];
  int rc;

  if (lg->srv_init)
    return luaL_error(L, "io.listen: already listening");
  if (port < 1 || port > 65535)
    return luaL_error(L, "io.listen: port %d is out of range", port);
  snprintf(lg->cb_path, sizeof(lg->cb_path), "%s", path);
  lg->port = port;
  cpx_server_config_defaults(&sc);
  snprintf(sc.host, sizeof(sc.host), "127.0.0.1");
  sc.port = port;
  sc.max_connections = 64;
  sc.http.max_body = 64 * 1024;
  sc.lingering_time_ms = 2000;
  cpx_server_init(&lg->srv, &lg->loop, &sc, NULL);
  lg->srv_init = 1;
  lg->srv.on_request = on_callback;
  lg->srv.data = lg;
  rc = cpx_server_listen(&lg->srv, err, sizeof(err));
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, rc < 0 && rc > -4096 ? uv_err_name(rc) : "EINVAL");
    return 3;
  }
  /* "localhost" may resolve to ::1 first; browsers fall back to 127.0.0.1
   * when ::1 refuses, other clients may not. Best effort: a host without
   * IPv6 loopback just has the one listener. */
  snprintf(sc.host, sizeof(sc.host), "::1");
  cpx_server_init(&lg->srv6, &lg->loop, &sc, NULL);
  lg->srv6_init = 1;
  lg->srv6.on_request = on_callback;
  lg->srv6.data = lg;
  cpx_server_listen(&lg->srv6, err, sizeof(err));
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- standard input ----------------------------------------------------- */

static void queue_line(login_t *lg, const char *s, size_t n) {
  char *copy;
  if (lg->wait == W_EVENT && !lg->running) {
    uv_timer_stop(&lg->timer);
    push_event(lg, "line", "text", s, n);
    resume(lg, 1);
    return;
  }
  if (lg->lcount == MAX_LINES || !(copy = malloc(n + 1)))
    return; /* bounded: a paste flood is dropped, not buffered */
  memcpy(copy, s, n);
  copy[n] = 0;
  lg->lines[(lg->lhead + lg->lcount) % MAX_LINES] = copy;
  lg->lcount++;
}

static void on_in_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  login_t *lg = h->data;
  *buf = uv_buf_init(lg->rbuf, sizeof(lg->rbuf));
}

static void on_in_closed(uv_handle_t *h) {
  CPX_UNUSED(h);
}

/* A secret typed on the terminal (io.watch_stdin{secret = true}: iFlow's
 * cookie) is not echoed: ECHO is off until the first line or the end of
 * the command, and a SIGINT/SIGTERM meanwhile restores it before the
 * default action (tcsetattr is async-signal-safe). One terminal per
 * process, so the saved state is static. */
static struct termios saved_tio;
static volatile sig_atomic_t tio_saved;

static void echo_restore(void) {
  if (tio_saved) {
    tcsetattr(0, TCSANOW, &saved_tio);
    tio_saved = 0;
  }
}

static void on_fatal_signal(int sig) {
  echo_restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void echo_off(void) {
  struct termios t;

  if (tio_saved || tcgetattr(0, &saved_tio) != 0)
    return;
  t = saved_tio;
  t.c_lflag &= ~(tcflag_t)ECHO;
  t.c_lflag |= ECHONL; /* the Enter still moves to a new line */
  tio_saved = 1;
  signal(SIGINT, on_fatal_signal);
  signal(SIGTERM, on_fatal_signal);
  if (tcsetattr(0, TCSANOW, &t) != 0)
    tio_saved = 0;
}

static void in_close(login_t *lg) {
  echo_restore();
  if (lg->in_open == 1) {
    lg->in_open = 2;
    uv_close((uv_handle_t *)&lg->in, on_in_closed);
  }
}

static void on_in_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  login_t *lg = s->data;
  if (nread < 0) {
    /* A last line without a newline still counts. */
    if (lg->linelen && !lg->overlong && !lg->ended)
      queue_line(lg, lg->line, lg->linelen);
    lg->linelen = 0;
    in_close(lg);
    if (lg->ended)
      return;
    lg->eof = 1;
    if (lg->wait == W_EVENT && !lg->running) {
      uv_timer_stop(&lg->timer);
      push_queued(lg);
      resume(lg, 1);
    }
    return;
  }
  for (ssize_t i = 0; i < nread && !lg->ended; i++) {
    char c = buf->base[i];
    if (c == '\n' || c == '\r') {
      if (lg->linelen && !lg->overlong)
        queue_line(lg, lg->line, lg->linelen);
      lg->linelen = 0;
      lg->overlong = 0;
    } else if (lg->linelen < sizeof(lg->line)) {
      lg->line[lg->linelen++] = c;
    } else {
      lg->overlong = 1;
    }
  }
}

/* io.watch_stdin([{secret = true}]) -> true | nil, why. A terminal or a
 * pipe is read as a stream; anything else (/dev/null, a file) is left
 * alone. secret: a terminal does not echo what is typed (echo_off). */
static int l_watch_stdin(lua_State *L) {
  login_t *lg = in_flow(L, "watch_stdin");
  uv_handle_type t = uv_guess_handle(0);
  int rc;

  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "secret");
    if (lua_toboolean(L, -1) && t == UV_TTY)
      echo_off();
    lua_pop(L, 1);
  }

  if (lg->in_open) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (t == UV_TTY) {
    rc = uv_tty_init(&lg->loop, &lg->in.tty, 0, 1);
  } else if (t == UV_NAMED_PIPE) {
    rc = uv_pipe_init(&lg->loop, &lg->in.pipe, 0);
    if (rc == 0) {
      lg->in_open = 1;
      rc = uv_pipe_open(&lg->in.pipe, 0);
    }
  } else {
    lua_pushnil(L);
    lua_pushliteral(L, "standard input is not a terminal or a pipe");
    return 2;
  }
  if (rc == 0)
    lg->in_open = 1;
  lg->in.pipe.data = lg; /* same offset in both members (uv_stream_t) */
  if (rc == 0)
    rc = uv_read_start((uv_stream_t *)&lg->in, on_in_alloc, on_in_read);
  if (rc != 0) {
    in_close(lg);
    lua_pushnil(L);
    lua_pushstring(L, uv_strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- the browser -------------------------------------------------------- */

#ifdef __APPLE__
#define OPENER "open"
#else
#define OPENER "xdg-open"
#endif

static void on_proc_closed(uv_handle_t *h) {
  login_t *lg = h->data;
  lg->proc_open = 0;
}

static void on_proc_exit(uv_process_t *p, int64_t status, int sig) {
  login_t *lg = p->data;
  if ((status != 0 || sig != 0) && !lg->ended) {
    printf("The browser opener (%s) failed (exit status %lld): open the URL "
           "yourself.\n",
           OPENER, (long long)status);
    fflush(stdout);
  }
  uv_close((uv_handle_t *)p, on_proc_closed);
}

/* io.open_browser(url) -> true | nil, why */
static int l_open_browser(lua_State *L) {
  login_t *lg = in_flow(L, "open_browser");
  const char *url = luaL_checkstring(L, 1);
  char *args[3];
  uv_stdio_container_t stdio[3];
  uv_process_options_t o;
  int rc;

  if (lg->proc_open) {
    lua_pushnil(L);
    lua_pushliteral(L, "a browser is being opened already");
    return 2;
  }
  args[0] = OPENER;
  args[1] = (char *)url;
  args[2] = NULL;
  memset(&o, 0, sizeof(o));
  for (int i = 0; i < 3; i++)
    stdio[i].flags = UV_IGNORE;
  o.file = OPENER;
  o.args = args;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.exit_cb = on_proc_exit;
  o.flags = UV_PROCESS_DETACHED;
  lg->proc.data = lg;
  rc = uv_spawn(&lg->loop, &lg->proc, &o);
  lg->proc_open = 1;
  if (rc != 0) {
    uv_close((uv_handle_t *)&lg->proc, on_proc_closed);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", OPENER, uv_strerror(rc));
    return 2;
  }
  /* The opener may outlive the login (some stay until the browser exits):
   * it must not hold the loop. */
  uv_unref((uv_handle_t *)&lg->proc);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- token requests ----------------------------------------------------- */

/* "name: value\r\n" lines -> { lowercase name = value } */
static void push_headers(lua_State *L, const char *p, size_t len) {
  const char *end = p + len;
  lua_newtable(L);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && colon > p) {
      const char *v = colon + 1, *ve = le;
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (const char *c = p; c < colon; c++)
        luaL_addchar(&b, (*c >= 'A' && *c <= 'Z') ? (char)(*c + 32) : *c);
      luaL_pushresult(&b);
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      lua_pushlstring(L, v, (size_t)(ve - v));
      lua_rawset(L, -3);
    }
    p = eol ? eol + 1 : end;
  }
}

static void on_fetch(cpx_fetch_t *f, int ev) {
  login_t *lg = f->data;
  lua_State *co = lg->co;
  int n;

  if (!(ev & CPX_FETCH_DONE) || lg->fetch != f)
    return;
  lg->fetch = NULL;
  lg->w.vm->host++;
  if (f->result == 0) {
    lua_pushinteger(co, f->status);
    push_headers(co, f->resp_headers ? f->resp_headers : "",
                 f->resp_headers_len);
    lua_pushlstring(co, f->body ? f->body : "", f->body_len);
    n = 3;
  } else {
    lua_pushnil(co);
    lua_pushstring(co, f->errmsg[0] ? f->errmsg : cpx_strerror(f->result));
    n = 2;
  }
  lg->w.vm->host--;
  cpx_fetch_free(f);
  resume(lg, n);
}

/* io.request{method, url, headers, body, ...} -> status, headers, body |
 * nil, err (rt.oauth.request's shape). The options are cpx.fetch's, read
 * by the same function (cpx_fetch_opts.h), with a token request's
 * defaults. */
static int l_request(lua_State *L) {
  /* a token request's own bounds: an answer is a few KiB */
  static const cpx_fetch_defaults_t d = {10000, 30000, 30000, MAX_TOKEN_BODY};
  login_t *lg = in_flow(L, "request");
  cpx_header_t hdrs[MAX_REQ_HEADERS];
  cpx_fetch_opts_t o;
  int rc;

  cpx_lua_fetch_opts(L, 1, "io.request", &d, &o, hdrs, MAX_REQ_HEADERS);
  rc = cpx_fetch_start(&lg->w.upstream, &o, on_fetch, lg, &lg->fetch);
  if (rc != 0) {
    lg->fetch = NULL;
    lua_pushnil(L);
    lua_pushstring(L, cpx_strerror(rc));
    return 2;
  }
  cpx_fetch_buffer(lg->fetch);
  lg->wait = W_FETCH;
  return lua_yield(L, 0);
}

/* ---- the rest of io ----------------------------------------------------- */

static int l_say(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  fwrite(s, 1, n, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

/* io.write(name, text) -> true | nil, err: atomically, 0600 (cpx_store),
 * in the threadpool: the fsyncs stay off the loop, which still has the
 * browser's page to send. Owns copies of name and text. */
typedef struct {
  uv_work_t req;
  login_t *lg;
  cpx_store_t *store;
  char *name, *text;
  size_t len;
  int rc;
} write_job_t;

static void write_work(uv_work_t *req) {
  write_job_t *j = req->data;
  j->rc = cpx_store_write(j->store, j->name, j->text, j->len);
}

static void write_done(uv_work_t *req, int status) {
  write_job_t *j = req->data;
  login_t *lg = j->lg;
  lua_State *co = lg->co;
  int rc = status ? status : j->rc, n = 1;
  free(j->name);
  free(j->text);
  free(j);
  lg->w.vm->host++;
  if (rc == 0) {
    lua_pushboolean(co, 1);
  } else {
    lua_pushnil(co);
    lua_pushstring(co, status ? uv_strerror(status) : cpx_strerror(rc));
    n = 2;
  }
  lg->w.vm->host--;
  resume(lg, n);
}

static int l_write(lua_State *L) {
  login_t *lg = in_flow(L, "write");
  size_t nlen, len;
  const char *name = luaL_checklstring(L, 1, &nlen);
  const char *text = luaL_checklstring(L, 2, &len);
  cpx_store_t *s = cpx_store_current();
  write_job_t *j;

  if (!s) {
    lua_pushnil(L);
    lua_pushliteral(L, "auth-dir is not open");
    return 2;
  }
  j = calloc(1, sizeof(*j));
  if (j) {
    j->name = malloc(nlen + 1);
    j->text = malloc(len + 1);
  }
  if (!j || !j->name || !j->text) {
    if (j) {
      free(j->name);
      free(j->text);
    }
    free(j);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  memcpy(j->name, name, nlen + 1);
  memcpy(j->text, text, len + 1);
  j->len = len;
  j->lg = lg;
  j->store = s;
  j->req.data = j;
  if (uv_queue_work(&lg->loop, &j->req, write_work, write_done) != 0) {
    free(j->name);
    free(j->text);
    free(j);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot queue the write");
    return 2;
  }
  lg->wait = W_WRITE;
  return lua_yield(L, 0);
}

static int l_dir(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  if (!s)
    return 0;
  lua_pushstring(L, cpx_store_dir(s));
  return 1;
}

static void push_io(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"say", l_say},         {"now", l_now},
      {"listen", l_listen},   {"watch_stdin", l_watch_stdin},
      {"wait", l_wait},       {"answer", l_answer},
      {"sleep", l_sleep},     {"open_browser", l_open_browser},
      {"request", l_request}, {"write", l_write},
      {"dir", l_dir},         {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
}

/* ---- the end ------------------------------------------------------------ */

static void on_closed(uv_handle_t *h) {
  CPX_UNUSED(h);
}

/* Closes what keeps the loop running; the callback server drains (a page
 * being written still reaches the browser). */
static void on_end(uv_timer_t *t) {
  login_t *lg = t->data;
  uv_close((uv_handle_t *)&lg->timer, on_closed);
  in_close(lg);
  if (lg->pending) {
    cpx_request_t *r = lg->pending;
    lg->pending = NULL;
    answer_text(r, 200, "Received", "See the terminal.");
    cpx_request_unref(r);
  }
  if (lg->fetch) {
    cpx_fetch_free(lg->fetch);
    lg->fetch = NULL;
  }
  if (lg->proc_open && !uv_is_closing((uv_handle_t *)&lg->proc))
    uv_close((uv_handle_t *)&lg->proc, on_proc_closed);
  if (lg->srv_init)
    cpx_server_drain(&lg->srv);
  if (lg->srv6_init)
    cpx_server_drain(&lg->srv6);
  cpx_upstream_close(&lg->w.upstream);
}

static void end_soon(login_t *lg) {
  uv_timer_stop(&lg->timer);
  uv_timer_start(&lg->timer, on_end, 0, 0);
}

/* Pushes rt.login.run onto L, or returns -1 with the message printed. */
static int push_run(cpx_vm_t *vm) {
  lua_State *L = vm->L;
  int base = lua_gettop(L);
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_remove(L, -2);
  /* The sandbox's require: a login.lua in lua.paths replaces the built-in
   * one, as for every module. */
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.env");
  lua_getfield(L, -1, "require");
  lua_remove(L, -2);
  lua_pushliteral(L, "rt.login");
  if (lua_pcall(L, 1, 1, base + 1) != 0) {
    fprintf(stderr, "cliproxy login: %s\n", lua_tostring(L, -1));
    lua_settop(L, base);
    return -1;
  }
  lua_getfield(L, -1, "run");
  if (!lua_isfunction(L, -1)) {
    fprintf(stderr, "cliproxy login: rt.login has no run function\n");
    lua_settop(L, base);
    return -1;
  }
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  return 0;
}

const char *const cpx_login_providers[] = {
    "claude", "codex", "gemini", "antigravity", "qwen", "iflow", NULL};

static void push_args(lua_State *L, cpx_vm_t *vm, const cpx_login_opts_t *o) {
  lua_createtable(L, 0, 8);
  lua_pushstring(L, o->provider);
  lua_setfield(L, -2, "provider");
  lua_pushboolean(L, o->device);
  lua_setfield(L, -2, "device");
  lua_pushboolean(L, !o->no_browser);
  lua_setfield(L, -2, "browser");
  lua_pushboolean(L, o->cookie);
  lua_setfield(L, -2, "cookie");
  if (o->project_id) {
    lua_pushstring(L, o->project_id);
    lua_setfield(L, -2, "project_id");
  }
  if (o->port > 0) {
    lua_pushinteger(L, o->port);
    lua_setfield(L, -2, "port");
  }
  if (o->timeout > 0) {
    lua_pushnumber(L, o->timeout);
    lua_setfield(L, -2, "timeout");
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->app_ref);
  lua_getfield(L, -1, "config");
  lua_remove(L, -2);
  lua_setfield(L, -2, "config");
}

int cpx_login_run(const cpx_login_opts_t *opts, const char *config_path,
                  const char *lua_dir) {
  login_t *lg = calloc(1, sizeof(*lg));
  cpx_worker_t *w;
  cpx_vm_t *vm;
  lua_State *L;
  char err[4096];
  int rc = 1;

  if (!lg) {
    fprintf(stderr, "cliproxy login: out of memory\n");
    return 1;
  }
  signal(SIGPIPE, SIG_IGN); /* a browser that hangs up mid-page */
  umask(077);
  /* The boot's info lines (models, skipped files) are not this command's
   * business; warnings still show. */
  cpx_log_set_level(CPX_LOG_WARN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  w = &lg->w;
  uv_loop_init(&lg->loop);
  w->loop = &lg->loop;
  snprintf(w->config_path, sizeof(w->config_path), "%s", config_path);
  snprintf(w->lua_dir, sizeof(w->lua_dir), "%s", lua_dir);
  cpx_worker_init_lua(w);
  if (cpx_vm_new(w, w->config_path, &w->vm, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    goto out;
  }
  vm = w->vm;
  if (cpx_upstream_init(&w->upstream, w->loop, vm->settings.proxy_url) != 0) {
    fprintf(stderr, "cliproxy login: cannot initialise libcurl\n");
    goto out;
  }
  cpx_upstream_set_ca(&w->upstream, vm->settings.upstream_ca_file);
  uv_timer_init(&lg->loop, &lg->timer);
  lg->timer.data = lg;
  L = vm->L;
  vm->host++;
  if (push_run(vm) != 0) {
    vm->host--;
    uv_close((uv_handle_t *)&lg->timer, on_closed);
    cpx_upstream_close(&w->upstream);
    uv_run(&lg->loop, UV_RUN_DEFAULT);
    goto out;
  }
  lua_pushlightuserdata(L, lg);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_LOGIN);
  lg->co = lua_newthread(L);
  lg->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_xmove(L, lg->co, 1); /* run */
  push_args(lg->co, vm, opts);
  push_io(lg->co);
  vm->host--;
  resume(lg, 2);
  uv_run(&lg->loop, UV_RUN_DEFAULT);
  rc = lg->exit_code;
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_LOGIN);

out:
  echo_restore();
  if (lg->srv_init)
    cpx_server_close(&lg->srv);
  if (lg->srv6_init)
    cpx_server_close(&lg->srv6);
  cpx_worker_close_lua(w);
  uv_run(&lg->loop, UV_RUN_NOWAIT);
  uv_run(&lg->loop, UV_RUN_NOWAIT);
  uv_loop_close(&lg->loop);
  for (int i = 0; i < MAX_LINES; i++)
    free(lg->lines[i]);
  free(lg);
  fflush(stdout);
  return rc;
}
