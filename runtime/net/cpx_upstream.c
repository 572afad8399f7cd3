/* cpx_upstream.c: see cpx_upstream.h. */
#include "cpx_upstream.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cpx_buf.h"
#include "cpx_h1.h"
#include "cpx_log.h"

/* Body bytes held before the owner has chosen a mode; past this the
 * transfer pauses. */
#define HOLD_MAX (1024 * 1024)
#define MAX_RESP_HEADERS (256 * 1024)
#define EV_FLUSH 4u /* internal: deliver held bytes to a new sink */

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
  int events; /* what curl last asked for, to re-arm after an error */
  int errors; /* poll errors in a row */
  cpx_upstream_t *up;
} sock_ctx_t;

static void check_multi_info(cpx_upstream_t *up);
static void queue_event(cpx_fetch_t *f, unsigned ev);

/* ---- curl <-> libuv glue ------------------------------------------------ */

static void on_sock_closed(uv_handle_t *h) {
  free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx_t *ctx = p->data;
  int flags = 0, running;

  if (status < 0) {
    /* libuv turns EPOLLERR (a reset, a refused connect) into UV_EBADF and
     * stops the watcher. Handing curl CURL_CSELECT_ERR alone makes it fail
     * the transfer with "select/poll returned error" and a send error,
     * which it never retries; letting it do the read or write it wanted
     * shows it the real errno, so a keep-alive connection the server
     * closed just as it was reused is retried on a fresh one, as curl does
     * on its own poll loop. The watcher is re-armed for curl's next call;
     * if the error comes straight back and curl has not dropped the socket,
     * it gets CURL_CSELECT_ERR after all, so this can never spin. */
    if (ctx->errors++ == 0) {
      events = ctx->events;
      uv_poll_start(&ctx->poll, ctx->events, on_poll);
    } else {
      flags = CURL_CSELECT_ERR;
    }
  } else {
    ctx->errors = 0;
  }
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(ctx->up->multi, ctx->fd, flags, &running);
  check_multi_info(ctx->up);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp,
                   void *socketp) {
  cpx_upstream_t *up = userp;
  sock_ctx_t *ctx = socketp;
  CPX_UNUSED(e);

  if (what == CURL_POLL_REMOVE) {
    if (ctx) {
      uv_poll_stop(&ctx->poll);
      uv_close((uv_handle_t *)&ctx->poll, on_sock_closed);
      curl_multi_assign(up->multi, s, NULL);
    }
    return 0;
  }
  if (!ctx) {
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
      return -1;
    ctx->fd = s;
    ctx->up = up;
    if (uv_poll_init_socket(up->loop, &ctx->poll, s) != 0) {
      free(ctx);
      return -1;
    }
    ctx->poll.data = ctx;
    curl_multi_assign(up->multi, s, ctx);
  }
  int events = 0;
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  ctx->events = events;
  uv_poll_start(&ctx->poll, events, on_poll);
  return 0;
}

static void on_curl_timeout(uv_timer_t *t) {
  cpx_upstream_t *up = t->data;
  int running;
  curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(up);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  cpx_upstream_t *up = userp;
  CPX_UNUSED(m);
  if (timeout_ms < 0)
    uv_timer_stop(&up->timer);
  else
    /* Never call socket_action from here: curl forbids the recursion. */
    uv_timer_start(&up->timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- deferred events ---------------------------------------------------- */

static void deliver_held(cpx_fetch_t *f);

static void on_idle(uv_idle_t *h) {
  cpx_upstream_t *up = h->data;
  cpx_fetch_t *list = up->pending;

  up->pending = NULL;
  uv_idle_stop(h);
  while (list) {
    cpx_fetch_t *f = list;
    list = f->next_pending;
    f->next_pending = NULL;
    f->queued = 0;
    if (f->freed)
      continue;
    unsigned ev = f->events;
    f->events = 0;
    if (ev & EV_FLUSH) {
      deliver_held(f);
      if (f->freed)
        continue;
    }
    if (ev & CPX_FETCH_HEADERS) {
      f->on_event(f, CPX_FETCH_HEADERS);
      if (f->freed)
        continue;
    }
    if (ev & CPX_FETCH_DATA) {
      f->on_event(f, CPX_FETCH_DATA);
      if (f->freed)
        continue;
    }
    if (ev & CPX_FETCH_DONE) {
      /* A sink sees every byte before it hears of the end. */
      if (f->mode == 2 && f->body_read < f->body_len) {
        f->events |= CPX_FETCH_DONE; /* re-queued by cpx_fetch_resume */
        continue;
      }
      f->on_event(f, CPX_FETCH_DONE);
    }
  }
}

static void queue_event(cpx_fetch_t *f, unsigned ev) {
  cpx_upstream_t *up = f->up;
  f->events |= ev;
  if (f->queued)
    return;
  f->queued = 1;
  f->next_pending = up->pending;
  up->pending = f;
  uv_idle_start(&up->idle, on_idle);
}

static void unqueue(cpx_fetch_t *f) {
  cpx_fetch_t **pp = &f->up->pending;
  while (*pp) {
    if (*pp == f) {
      *pp = f->next_pending;
      break;
    }
    pp = &(*pp)->next_pending;
  }
  f->queued = 0;
  f->next_pending = NULL;
}

/* ---- per-transfer timers ------------------------------------------------ */

static void finish(cpx_fetch_t *f, int result, const char *msg) {
  if (f->done)
    return;
  f->done = 1;
  f->result = result;
  if (msg && !f->errmsg[0])
    snprintf(f->errmsg, sizeof(f->errmsg), "%s", msg);
  uv_timer_stop(&f->timer);
  queue_event(f, CPX_FETCH_DONE);
}

static void on_fetch_timer(uv_timer_t *t) {
  cpx_fetch_t *f = t->data;
  if (f->done || f->freed)
    return;
  if (f->in_multi) {
    curl_multi_remove_handle(f->up->multi, f->easy);
    f->in_multi = 0;
    f->up->running--;
  }
  finish(f, CPX_ETIMEOUT,
         f->headers_done ? "upstream stream idle timeout"
                         : "upstream first-byte timeout");
}

static void arm_timer(cpx_fetch_t *f) {
  uint64_t ms = f->headers_done || f->bytes_in ? f->idle_ms : f->first_byte_ms;
  if (f->h1 || f->done || f->paused || !ms)
    return;
  uv_timer_start(&f->timer, on_fetch_timer, ms, 0);
}

/* ---- curl callbacks ----------------------------------------------------- */

static size_t header_cb(char *p, size_t size, size_t nmemb, void *ud) {
  cpx_fetch_t *f = ud;
  size_t n = size * nmemb;

  if (f->freed)
    return 0;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    /* A new status line: an interim 1xx response came first. */
    const char *sp = memchr(p, ' ', n);
    f->status = sp ? atoi(sp + 1) : 0;
    f->resp_headers_len = 0;
    return n;
  }
  if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    if (f->status >= 200 && !f->headers_done) {
      f->headers_done = 1;
      arm_timer(f);
      queue_event(f, CPX_FETCH_HEADERS);
    }
    return n;
  }
  if (f->resp_headers_len + n > MAX_RESP_HEADERS)
    return 0;
  if (cpx_buf_append(&f->resp_headers, &f->resp_headers_len,
                     &f->resp_headers_cap, p, n))
    return 0;
  return n;
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud) {
  cpx_fetch_t *f = ud;
  size_t n = size * nmemb;

  if (f->freed)
    return 0;
  f->bytes_in += n;
  if (f->mode == 2 && f->body_read >= f->body_len) {
    int rc = f->sink(f, p, n);
    if (rc == CPX_EAGAIN) {
      f->bytes_in -= n;
      f->paused = 1;
      uv_timer_stop(&f->timer);
      return CURL_WRITEFUNC_PAUSE;
    }
    if (rc < 0) {
      f->result = rc;
      return 0;
    }
    arm_timer(f);
    return n;
  }
  if (f->mode == 1) {
    if (f->body_len + n > f->max_body) {
      f->result = CPX_ELIMIT;
      snprintf(f->errmsg, sizeof(f->errmsg), "upstream body over %zu bytes",
               f->max_body);
      return 0;
    }
  } else if (f->body_len - f->body_read >= HOLD_MAX) {
    /* Nobody takes the bytes yet: stop reading instead of growing. */
    f->bytes_in -= n;
    f->paused = 1;
    uv_timer_stop(&f->timer);
    if (f->notify_data)
      queue_event(f, CPX_FETCH_DATA);
    return CURL_WRITEFUNC_PAUSE;
  }
  if (cpx_buf_append(&f->body, &f->body_len, &f->body_cap, p, n)) {
    f->result = CPX_ENOMEM;
    return 0;
  }
  if (f->mode == 0 && f->notify_data)
    queue_event(f, CPX_FETCH_DATA);
  arm_timer(f);
  return n;
}

static void check_multi_info(cpx_upstream_t *up) {
  CURLMsg *msg;
  int left;

  while ((msg = curl_multi_info_read(up->multi, &left))) {
    cpx_fetch_t *f;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
    CURLcode cc = msg->data.result;
    curl_multi_remove_handle(up->multi, msg->easy_handle);
    f->in_multi = 0;
    up->running--;
    if (cc == CURLE_OK) {
      if (!f->headers_done) {
        /* A response without a final blank header line cannot happen with
         * curl; treat a missing status as a transport error. */
        finish(f, CPX_EIO, "upstream sent no response");
      } else {
        finish(f, 0, NULL);
      }
    } else {
      int rc = f->result
                   ? f->result
                   : (cc == CURLE_OPERATION_TIMEDOUT ? CPX_ETIMEOUT : CPX_EIO);
      if (!f->errmsg[0])
        snprintf(f->errmsg, sizeof(f->errmsg), "%s", curl_easy_strerror(cc));
      finish(f, rc, NULL);
    }
  }
}

/* ---- the cpx_h1 transport ----------------------------------------------- */

/* A fetch on the worker's h1 pool. The client calls back inside its parser
 * (on_head, on_body) or from a libuv callback (on_done); the owner hears of
 * it through queue_event, from the loop, as with curl. Freed with the
 * fetch's timer (on_fetch_closed), so a cancel from inside a callback never
 * leaves the client pointing at freed memory. */
typedef struct cpx_h1_fetch_s {
  cpx_h1_req_t q;
  cpx_h1_timeouts_t to; /* q.to */
  char *head;           /* owned: request line and headers */
  size_t head_len, head_cap;
  char host[256]; /* q.host: the name, an IPv6 literal without brackets */
  int active;     /* q is with the pool: on_done is still to come */
} h1_fetch_t;

static int h1_on_head(cpx_h1_req_t *q) {
  cpx_fetch_t *f = q->data;
  if (f->freed)
    return -1;
  f->status = q->status;
  f->resp_headers_len = 0;
  for (size_t i = 0; i < q->nfields; i++) {
    const cpx_h1_field_t *fd = &q->fields[i];
    if (cpx_buf_append(&f->resp_headers, &f->resp_headers_len,
                       &f->resp_headers_cap, q->hbuf + fd->name_off,
                       fd->name_len) ||
        cpx_buf_append(&f->resp_headers, &f->resp_headers_len,
                       &f->resp_headers_cap, ": ", 2) ||
        cpx_buf_append(&f->resp_headers, &f->resp_headers_len,
                       &f->resp_headers_cap, q->hbuf + fd->value_off,
                       fd->value_len) ||
        cpx_buf_append(&f->resp_headers, &f->resp_headers_len,
                       &f->resp_headers_cap, "\r\n", 2)) {
      f->result = CPX_ENOMEM;
      return -1;
    }
  }
  f->headers_done = 1;
  queue_event(f, CPX_FETCH_HEADERS);
  return 0;
}

/* Stops reading: a sink that refused bytes, or held bytes at their bound.
 * The rest of the current read still arrives (it is held; at most one read
 * buffer past the bound). */
static void h1_pause(cpx_fetch_t *f) {
  if (f->paused)
    return;
  f->paused = 1;
  cpx_h1_pause(&f->h1->q);
}

static int h1_on_body(cpx_h1_req_t *q, const char *p, size_t n) {
  cpx_fetch_t *f = q->data;
  if (f->freed)
    return -1;
  f->bytes_in += n;
  if (f->mode == 2 && !f->paused && f->body_read >= f->body_len) {
    int rc = f->sink(f, p, n);
    if (rc == 0)
      return f->freed ? -1 : 0;
    if (rc != CPX_EAGAIN) {
      f->result = rc;
      return -1;
    }
    /* Refused for now: held below, handed over by cpx_fetch_resume. curl
     * keeps such bytes itself; this client has already read them. */
    h1_pause(f);
  }
  if (f->mode == 1 && f->body_len + n > f->max_body) {
    f->result = CPX_ELIMIT;
    snprintf(f->errmsg, sizeof(f->errmsg), "upstream body over %zu bytes",
             f->max_body);
    return -1;
  }
  if (cpx_buf_append(&f->body, &f->body_len, &f->body_cap, p, n)) {
    f->result = CPX_ENOMEM;
    return -1;
  }
  if (f->mode == 0 && f->notify_data)
    queue_event(f, CPX_FETCH_DATA);
  if (f->mode != 1 && f->body_len - f->body_read >= HOLD_MAX)
    h1_pause(f); /* nobody takes the bytes yet: stop reading */
  return 0;
}

static void h1_on_done(cpx_h1_req_t *q, int rc) {
  cpx_fetch_t *f = q->data;
  f->h1->active = 0;
  if (f->freed)
    return;
  if (rc == 0) {
    finish(f, 0, NULL);
    return;
  }
  /* The codes of the curl transport: a timeout, the owner's own failure
   * (body bound, memory, a sink's error), else a transport error. */
  if (f->result)
    rc = f->result;
  else if (rc != CPX_ETIMEOUT)
    rc = CPX_EIO;
  finish(f, rc, q->err ? q->err : cpx_strerror(rc));
}

static const cpx_h1_cb_t h1_cb = {h1_on_head, h1_on_body, h1_on_done};

static int proxy_is_direct(const char *proxy) {
  return !*proxy || strcasecmp(proxy, "direct") == 0 ||
         strcasecmp(proxy, "none") == 0;
}

static int h1_add(h1_fetch_t *h, const char *p, size_t n) {
  return cpx_buf_append(&h->head, &h->head_len, &h->head_cap, p, n);
}

static int h1_adds(h1_fetch_t *h, const char *s) {
  return h1_add(h, s, strlen(s));
}

/* A header name or value that would end its line early (header splitting):
 * refused rather than sent. */
static int has_line_break(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
      return 1;
  return 0;
}

static int name_is(const cpx_header_t *hd, const char *name) {
  size_t n = strlen(name);
  return hd->name.n == n && strncasecmp(hd->name.p, name, n) == 0;
}

/* Builds h's request head from o and the parsed URL pieces, as curl would
 * send it: Host (unless given), the caller's headers in order, an Accept of any
 * type when none, for a body Content-Length and (when none) curl's POSTFIELDS
 * Content-Type. Returns 0, CPX_EAGAIN (let curl do it) or a negative code. */
static int h1_build_head(h1_fetch_t *h, const cpx_fetch_opts_t *o,
                         const char *method, const char *path,
                         const char *query, const char *hostport) {
  int have_host = 0, have_accept = 0, have_ctype = 0, rc = 0;
  char num[32];

  for (size_t i = 0; i < o->nheaders; i++) {
    const cpx_header_t *hd = &o->headers[i];
    if (has_line_break(hd->name.p, hd->name.n) ||
        has_line_break(hd->value.p, hd->value.n) || !hd->name.n ||
        memchr(hd->name.p, ':', hd->name.n))
      return CPX_EINVAL;
    if (name_is(hd, "transfer-encoding"))
      return CPX_EAGAIN; /* the caller frames the body itself */
    have_host |= name_is(hd, "host");
    have_accept |= name_is(hd, "accept");
    have_ctype |= name_is(hd, "content-type");
  }
  rc |= h1_adds(h, method);
  rc |= h1_add(h, " ", 1);
  rc |= h1_adds(h, path);
  if (query) {
    rc |= h1_add(h, "?", 1);
    rc |= h1_adds(h, query);
  }
  rc |= h1_adds(h, " HTTP/1.1\r\n");
  if (!have_host) {
    rc |= h1_adds(h, "Host: ");
    rc |= h1_adds(h, hostport);
    rc |= h1_add(h, "\r\n", 2);
  }
  for (size_t i = 0; i < o->nheaders; i++) {
    const cpx_header_t *hd = &o->headers[i];
    if (name_is(hd, "content-length"))
      continue; /* ours below, from the body we send */
    rc |= h1_add(h, hd->name.p, hd->name.n);
    rc |= h1_add(h, ": ", hd->value.n ? 2 : 1);
    rc |= h1_add(h, hd->value.p, hd->value.n);
    rc |= h1_add(h, "\r\n", 2);
  }
  if (!have_accept)
    rc |= h1_adds(h, "Accept: */*\r\n");
  if (o->body) {
    if (!have_ctype)
      rc |= h1_adds(h, "Content-Type: application/x-www-form-urlencoded\r\n");
    snprintf(num, sizeof(num), "Content-Length: %zu\r\n", o->body_len);
    rc |= h1_adds(h, num);
  }
  rc |= h1_add(h, "\r\n", 2);
  return rc ? CPX_ENOMEM : 0;
}

static void h1_fetch_free(h1_fetch_t *h) {
  if (!h)
    return;
  cpx_h1_req_free(&h->q);
  free(h->head);
  free(h);
}

/* Starts f on the h1 pool when it can carry o: 0 (started), CPX_EAGAIN
 * (not for this client: the caller uses curl) or a negative code. */
static int h1_start(cpx_fetch_t *f, const cpx_fetch_opts_t *o) {
  cpx_upstream_t *up = f->up;
  const char *proxy = o->proxy ? o->proxy : up->proxy;
  char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
  char *query = NULL, *user = NULL;
  char hostport[300];
  const char *method;
  h1_fetch_t *h = NULL;
  CURLU *u;
  int rc = CPX_EAGAIN, tls, portn;
  size_t hl;

  if (!up->h1 || up->h1->closed)
    return CPX_EAGAIN;
  if (proxy ? !proxy_is_direct(proxy) : up->env_proxy)
    return CPX_EAGAIN; /* cpx_h1 speaks to the origin only */
  method = o->method ? o->method : o->body ? "POST" : "GET";
  if (strcmp(method, "HEAD") == 0 || has_line_break(method, strlen(method)) ||
      strchr(method, ' '))
    return CPX_EAGAIN; /* a bodiless response the parser is not told of */
  u = curl_url();
  if (!u)
    return CPX_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, o->url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
    goto out; /* curl reports what is wrong with it */
  if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
    goto out; /* credentials in the URL: curl's basic auth */
  if (curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_OK)
    query = NULL;
  if (strcmp(scheme, "https") == 0)
    tls = 1;
  else if (strcmp(scheme, "http") == 0)
    tls = 0;
  else
    goto out;
  if (tls && !up->h1->tls)
    goto out; /* no trust loaded (the CA file failed): curl's own */
  portn = atoi(port);
  hl = strlen(host);
  if (hl >= sizeof(((h1_fetch_t *)0)->host) || portn <= 0 || portn > 65535)
    goto out;
  rc = CPX_ENOMEM;
  h = calloc(1, sizeof(*h));
  if (!h)
    goto out;
  if (host[0] == '[' && hl > 2 && host[hl - 1] == ']')
    memcpy(h->host, host + 1, hl - 2);
  else
    memcpy(h->host, host, hl);
  if (portn == (tls ? 443 : 80))
    snprintf(hostport, sizeof(hostport), "%s", host);
  else
    snprintf(hostport, sizeof(hostport), "%s:%d", host, portn);
  rc = h1_build_head(h, o, method, path, query, hostport);
  if (rc != 0)
    goto out;
  h->to.connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 10000;
  h->to.first_byte_ms = f->first_byte_ms;
  h->to.idle_ms = f->idle_ms;
  h->to.keepalive_ms = up->h1->to.keepalive_ms;
  h->q.cb = &h1_cb;
  h->q.data = f;
  h->q.host = h->host;
  h->q.port = portn;
  h->q.tls = tls;
  h->q.to = &h->to;
  h->q.bufs[0] = uv_buf_init(h->head, (unsigned)h->head_len);
  h->q.nbufs = 1;
  if (o->body && o->body_len)
    h->q.bufs[h->q.nbufs++] =
        uv_buf_init((char *)f->send_body, (unsigned)o->body_len);
  f->h1 = h;
  rc = cpx_h1_send(up->h1, &h->q);
  if (rc != 0) {
    f->h1 = NULL;
    rc = CPX_EAGAIN; /* nothing started: curl gets its chance */
    goto out;
  }
  h->active = 1;
  h = NULL;
out:
  h1_fetch_free(h);
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_free(path);
  curl_free(query);
  curl_free(user);
  curl_url_cleanup(u);
  return rc;
}

/* ---- public API --------------------------------------------------------- */

int cpx_upstream_init(cpx_upstream_t *up, uv_loop_t *loop, const char *proxy) {
  static int curl_ready;
  memset(up, 0, sizeof(*up));
  if (!curl_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return CPX_EIO;
    curl_ready = 1;
  }
  up->loop = loop;
  up->multi = curl_multi_init();
  if (!up->multi)
    return CPX_ENOMEM;
  curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
  curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
  curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
  /* Keep plenty of idle connections: reuse is worth ~3x on loopback. */
  curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, 512L);
  curl_multi_setopt(up->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  uv_timer_init(loop, &up->timer);
  uv_idle_init(loop, &up->idle);
  up->timer.data = up;
  up->idle.data = up;
  cpx_upstream_set_proxy(up, proxy);
  /* curl honours these when no proxy is set; read once, off any request. */
  {
    static const char *const vars[] = {"http_proxy", "https_proxy",
                                       "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
      const char *v = getenv(vars[i]);
      if (v && *v)
        up->env_proxy = 1;
    }
  }
  return 0;
}

void cpx_upstream_use_h1(cpx_upstream_t *up, cpx_h1_pool_t *pool) {
  up->h1 = pool;
}

void cpx_upstream_set_proxy(cpx_upstream_t *up, const char *proxy) {
  free(up->proxy);
  up->proxy = proxy && *proxy ? strdup(proxy) : NULL;
}

void cpx_upstream_set_ca(cpx_upstream_t *up, const char *ca_file) {
  free(up->ca_file);
  up->ca_file = ca_file && *ca_file ? strdup(ca_file) : NULL;
}

void cpx_upstream_apply_ca(CURL *e, const char *ca_file) {
  if (!ca_file || !*ca_file)
    return;
  /* Exactly the file's certificates, as curl --cacert with no CA path and
   * the h1 client do: a test CA does not add to the system store. */
  curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
  curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
}

static void noop_close(uv_handle_t *h) {
  CPX_UNUSED(h);
}

void cpx_upstream_close(cpx_upstream_t *up) {
  if (up->closed)
    return;
  up->closed = 1;
  uv_close((uv_handle_t *)&up->timer, noop_close);
  uv_close((uv_handle_t *)&up->idle, noop_close);
  curl_multi_cleanup(up->multi);
  up->multi = NULL;
  while (up->nspare > 0)
    curl_easy_cleanup(up->spare[--up->nspare]);
  free(up->proxy);
  up->proxy = NULL;
  free(up->ca_file);
  up->ca_file = NULL;
}

static void apply_proxy(CURL *e, const char *proxy) {
  if (!proxy)
    return;
  if (!*proxy || strcasecmp(proxy, "direct") == 0 ||
      strcasecmp(proxy, "none") == 0) {
    /* An empty proxy string also disables the *_proxy environment. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    return;
  }
  curl_easy_setopt(e, CURLOPT_PROXY, proxy);
}

int cpx_fetch_start(cpx_upstream_t *up, const cpx_fetch_opts_t *o,
                    cpx_fetch_event_cb on_event, void *data,
                    cpx_fetch_t **out) {
  cpx_fetch_t *f;
  CURL *e;
  int rc;

  if (up->closed)
    return CPX_ECLOSED;
  f = calloc(1, sizeof(*f));
  if (!f)
    return CPX_ENOMEM;
  f->up = up;
  f->on_event = on_event;
  f->data = data;
  f->max_body = o->max_body ? o->max_body : 64u * 1024 * 1024;
  f->first_byte_ms =
      o->first_byte_timeout_ms ? o->first_byte_timeout_ms : 300000;
  f->idle_ms = o->idle_timeout_ms ? o->idle_timeout_ms : 300000;
  uv_timer_init(up->loop, &f->timer);
  f->timer.data = f;
  if (o->body && o->body_borrowed) {
    f->send_body = o->body;
  } else if (o->body) {
    /* Both transports send it from here (curl reads it in place). */
    f->req_body = malloc(o->body_len + 1);
    if (!f->req_body) {
      cpx_fetch_free(f);
      return CPX_ENOMEM;
    }
    memcpy(f->req_body, o->body, o->body_len);
    f->send_body = f->req_body;
  }
  rc = h1_start(f, o);
  if (rc == 0) {
    *out = f;
    return 0;
  }
  if (rc != CPX_EAGAIN) {
    cpx_fetch_free(f);
    return rc;
  }

  e = up->nspare > 0 ? up->spare[--up->nspare] : curl_easy_init();
  if (!e) {
    cpx_fetch_free(f);
    return CPX_ENOMEM;
  }
  f->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, o->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, f);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errmsg);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(
      e, CURLOPT_CONNECTTIMEOUT_MS,
      (long)(o->connect_timeout_ms ? o->connect_timeout_ms : 10000));
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
  /* curl's default 16 KiB receive buffer: a bigger one costs an allocation
   * per transfer and buys nothing for event streams. */
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  apply_proxy(e, o->proxy ? o->proxy : up->proxy);
  cpx_upstream_apply_ca(e, up->ca_file);

  /* Never let curl add "Expect: 100-continue" (a round trip for big
   * bodies). */
  f->hdrs = curl_slist_append(f->hdrs, "Expect:");
  for (size_t i = 0; i < o->nheaders; i++) {
    const cpx_header_t *h = &o->headers[i];
    char *line = malloc(h->name.n + h->value.n + 3);
    struct curl_slist *nl;
    if (!line)
      continue;
    memcpy(line, h->name.p, h->name.n);
    if (h->value.n) {
      line[h->name.n] = ':';
      line[h->name.n + 1] = ' ';
      memcpy(line + h->name.n + 2, h->value.p, h->value.n);
      line[h->name.n + 2 + h->value.n] = '\0';
    } else {
      /* "Name;" sends an empty header in curl. */
      line[h->name.n] = ';';
      line[h->name.n + 1] = '\0';
    }
    nl = curl_slist_append(f->hdrs, line);
    free(line);
    if (nl)
      f->hdrs = nl;
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->hdrs);

  if (o->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->send_body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
  }
  if (o->method)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
  if (o->method && strcmp(o->method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);

  if (curl_multi_add_handle(up->multi, e) != CURLM_OK) {
    cpx_fetch_free(f);
    return CPX_EIO;
  }
  f->in_multi = 1;
  up->running++;
  arm_timer(f);
  *out = f;
  return 0;
}

static void unpause(cpx_fetch_t *f) {
  if (!f->paused || f->freed)
    return;
  f->paused = 0;
  if (f->h1) {
    if (f->h1->active)
      cpx_h1_resume(&f->h1->q); /* may end it: on_done queues the event */
    return;
  }
  arm_timer(f);
  if (f->in_multi) {
    /* May call write_cb synchronously with the bytes curl kept. */
    curl_easy_pause(f->easy, CURLPAUSE_CONT);
    check_multi_info(f->up);
  }
}

void cpx_fetch_buffer(cpx_fetch_t *f) {
  f->mode = 1;
  if (f->done)
    return;
  unpause(f);
}

static void deliver_held(cpx_fetch_t *f) {
  while (f->mode == 2 && f->body_read < f->body_len && !f->freed) {
    int rc = f->sink(f, f->body + f->body_read, f->body_len - f->body_read);
    if (rc == CPX_EAGAIN)
      return; /* cpx_fetch_resume comes back here */
    if (rc < 0) {
      if (f->in_multi) {
        curl_multi_remove_handle(f->up->multi, f->easy);
        f->in_multi = 0;
        f->up->running--;
      }
      if (f->h1 && f->h1->active) {
        f->h1->active = 0;
        cpx_h1_cancel(&f->h1->q);
      }
      f->body_read = f->body_len;
      finish(f, rc, "stream handler failed");
      return;
    }
    f->body_read = f->body_len;
  }
  if (f->body_read >= f->body_len && f->body_len) {
    free(f->body);
    f->body = NULL;
    f->body_len = f->body_read = f->body_cap = 0;
  }
  if (f->events & CPX_FETCH_DONE)
    queue_event(f, 0);
  else if (!f->done)
    unpause(f);
}

void cpx_fetch_sink(cpx_fetch_t *f, cpx_fetch_sink_cb sink) {
  f->mode = 2;
  f->sink = sink;
  /* Held bytes go to the sink from the loop, not from inside the caller;
   * a transfer that already ended reports its end again after them. */
  queue_event(f, EV_FLUSH | (f->done ? CPX_FETCH_DONE : 0));
}

void cpx_fetch_resume(cpx_fetch_t *f) {
  if (f->freed)
    return;
  if (f->mode == 2 && f->body_read < f->body_len) {
    deliver_held(f);
    return;
  }
  if (f->events & CPX_FETCH_DONE) {
    queue_event(f, 0);
    return;
  }
  unpause(f);
}

static void on_fetch_closed(uv_handle_t *h) {
  cpx_fetch_t *f = h->data;
  h1_fetch_free(f->h1);
  free(f);
}

void cpx_fetch_free(cpx_fetch_t *f) {
  if (!f || f->freed)
    return;
  f->freed = 1;
  if (f->queued)
    unqueue(f);
  if (f->in_multi) {
    curl_multi_remove_handle(f->up->multi, f->easy);
    f->in_multi = 0;
    f->up->running--;
  }
  if (f->h1 && f->h1->active) {
    /* No callback after this; the connection closes (cut short). */
    f->h1->active = 0;
    cpx_h1_cancel(&f->h1->q);
  }
  if (!f->easy) {
    /* an h1 fetch, or one that failed before it had a handle */
  } else if (!f->up->closed && f->up->nspare < (int)(sizeof(f->up->spare) /
                                                     sizeof(f->up->spare[0]))) {
    curl_easy_reset(f->easy);
    f->up->spare[f->up->nspare++] = f->easy;
  } else {
    curl_easy_cleanup(f->easy);
  }
  curl_slist_free_all(f->hdrs);
  free(f->req_body);
  free(f->resp_headers);
  free(f->body);
  uv_close((uv_handle_t *)&f->timer, on_fetch_closed);
}
