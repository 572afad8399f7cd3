/* cpx_server.c: see cpx_server.h. */
#include "cpx_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

#include "cpx_buf.h"
#include "cpx_errbody.h"
#include "cpx_log.h"
#include "cpx_metrics.h"

/* Bytes read while a request is in flight are kept (pipelining, or a
 * client that sends the next request early) up to this bound, then reading
 * stops until the response is done. */
#define CPX_CONN_PENDING_MAX (64 * 1024)

enum {
  CONN_IDLE = 0, /* waiting for the first byte of a request */
  CONN_HEADERS,  /* reading the header */
  CONN_BODY,     /* reading the body */
  CONN_ACTIVE,   /* request handed to the handler */
  CONN_LINGER,   /* response sent, discarding input before close */
};

struct cpx_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  cpx_server_t *srv;
  cpx_conn_t *prev, *next;
  cpx_http_parser_t parser;
  cpx_tls_conn_t *tls; /* owned */
  char *pending;       /* owned: input not yet fed to the parser */
  size_t pending_len, pending_cap;
  cpx_request_t *active; /* holds one reference */
  size_t write_queued;
  size_t lingered;          /* bytes discarded since the answer */
  uint64_t linger_deadline; /* uv_now() cap on lingering; 0 = not yet */
  int state;
  int reading;
  int closing;
  int handles_open;
  int close_when_flushed;
  int shutting_down;
  int timer_mode; /* what the running timer means: a CONN_* state or -1 */
  struct cpx_ip_count_s *ip; /* its address's count (srv->ip_buckets) */
  /* A streamed answer's head, held (owned) until the first body bytes so
   * that both leave in one write; on srv->held until then, and flushed on
   * its own before the loop next waits (flush_held) if nothing follows. */
  char *held;
  size_t held_len;
  cpx_conn_t *held_next, **held_prev;
  char remote[64];
};

/* One client address's open connections (limits.max-connections-per-ip).
 * Owned by the server's table; freed when the last one closes. */
typedef struct cpx_ip_count_s {
  struct cpx_ip_count_s *next;
  uint8_t addr[16]; /* IPv4 in the first 4 bytes; IPv6 by its /64 */
  size_t count;
} cpx_ip_count_t;

#define CPX_IP_BUCKETS 4096

typedef struct {
  uv_write_t req;
  cpx_conn_t *conn;
  size_t len;
  uv_buf_t buf;
  char data[];
} conn_write_t;

static void conn_close(cpx_conn_t *c);
static void conn_process(cpx_conn_t *c);
static void conn_start_reading(cpx_conn_t *c);
static void request_done(cpx_request_t *r);
static void conn_timer_arm(cpx_conn_t *c, uint64_t ms, int mode);
static void conn_linger_arm(cpx_conn_t *c);
static void ip_release(cpx_server_t *srv, cpx_conn_t *c);

const cpx_header_t cpx_json_headers[CPX_JSON_HEADERS_N] = {
    CPX_CORS_HEADERS, {CPX_STR("Content-Type"), CPX_STR("application/json")}};

const cpx_header_t cpx_sse_headers[CPX_SSE_HEADERS_N] = {
    CPX_CORS_HEADERS,
    {CPX_STR("Content-Type"), CPX_STR("text/event-stream")},
    {CPX_STR("Cache-Control"), CPX_STR("no-cache")},
    {CPX_STR("X-Accel-Buffering"), CPX_STR("no")},
};

void cpx_server_config_defaults(cpx_server_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  snprintf(cfg->host, sizeof(cfg->host), "127.0.0.1");
  cfg->port = 8317;
  cfg->http.max_header_bytes = 64 * 1024;
  cfg->http.max_fields = 100;
  cfg->http.max_body = 32u * 1024 * 1024;
  cfg->header_timeout_ms = 10000;
  cfg->body_timeout_ms = 60000;
  cfg->keepalive_timeout_ms = 60000;
  cfg->write_stall_ms = 300000;
  cfg->drain_timeout_ms = 30000;
  cfg->write_high_water = 256 * 1024;
  cfg->write_low_water = 64 * 1024;
  cfg->lingering_time_ms = 30000;
  cfg->lingering_timeout_ms = 5000;
  cfg->lingering_max_bytes = 64u * 1024 * 1024;
  /* Far below the fd limits we ask for, far above what one proxy needs;
   * it stops a flood before it takes every descriptor. */
  cfg->max_connections = 10000;
}

/* ---- writing ------------------------------------------------------------ */

/* Arms the linger timer: the next read must come within
 * lingering_timeout_ms, and all of lingering within lingering_time_ms of
 * the first call. A zero lingering_time closes at once (error_response
 * does not call it before its answer is written then). */
static void conn_linger_arm(cpx_conn_t *c) {
  const cpx_server_config_t *cfg = &c->srv->cfg;
  uint64_t now = uv_now(c->srv->loop);
  uint64_t ms = cfg->lingering_timeout_ms;

  if (c->linger_deadline == 0)
    c->linger_deadline = now + cfg->lingering_time_ms;
  if (now >= c->linger_deadline) {
    conn_close(c);
    return;
  }
  if (ms == 0 || ms > c->linger_deadline - now)
    ms = c->linger_deadline - now;
  conn_timer_arm(c, ms, CONN_LINGER);
}

static void on_shutdown_done(uv_shutdown_t *req, int status) {
  cpx_conn_t *c = req->data;
  free(req);
  c->shutting_down = 0;
  if (status < 0 || c->closing) {
    conn_close(c);
    return;
  }
  /* Linger: read and discard what the client still sends, then close. */
  c->state = CONN_LINGER;
  conn_start_reading(c);
  conn_linger_arm(c);
}

static void conn_flushed(cpx_conn_t *c) {
  if (c->close_when_flushed && c->write_queued == 0 && !c->closing &&
      !c->shutting_down) {
    uv_shutdown_t *sd = malloc(sizeof(*sd));
    if (!sd) {
      conn_close(c);
      return;
    }
    sd->data = c;
    c->shutting_down = 1;
    if (uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown_done) != 0) {
      free(sd);
      c->shutting_down = 0;
      conn_close(c);
    }
  }
}

static void on_write_done(uv_write_t *req, int status) {
  conn_write_t *w = cpx_container_of(req, conn_write_t, req);
  cpx_conn_t *c = w->conn;
  size_t before = c->write_queued;

  c->write_queued -= w->len;
  free(w);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->closing)
    return;
  if (c->state == CONN_ACTIVE) {
    /* Progress was made: re-arm or stop the write-stall timer. */
    if (c->write_queued > 0)
      conn_timer_arm(c, c->srv->cfg.write_stall_ms, CONN_ACTIVE);
    else if (c->timer_mode == CONN_ACTIVE) {
      /* Disarmed: the next queued write must arm it again. */
      uv_timer_stop(&c->timer);
      c->timer_mode = -1;
    }
  }
  if (c->active && before >= c->srv->cfg.write_low_water &&
      c->write_queued < c->srv->cfg.write_low_water && c->active->on_drain)
    c->active->on_drain(c->active);
  conn_flushed(c);
}

static void held_unlink(cpx_conn_t *c) {
  if (!c->held_prev)
    return;
  *c->held_prev = c->held_next;
  if (c->held_next)
    c->held_next->held_prev = c->held_prev;
  c->held_next = NULL;
  c->held_prev = NULL;
}

static int conn_write_pieces(cpx_conn_t *c, const char *p1, size_t n1,
                             const char *p2, size_t n2, const char *p3,
                             size_t n3);

/* Queues bytes on the socket (already encrypted when TLS is on), after a
 * held head if there is one. */
static int conn_write_raw(cpx_conn_t *c, const char *p1, size_t n1,
                          const char *p2, size_t n2, const char *p3,
                          size_t n3) {
  if (c->held) {
    /* The head and the first piece become one; the pieces stay three. */
    char *head = c->held;
    size_t hn = c->held_len;
    int rc;
    c->held = NULL;
    c->held_len = 0;
    held_unlink(c);
    if (n1 && n2 && n3) {
      char *m = realloc(head, hn + n1);
      if (!m) {
        free(head);
        return CPX_ENOMEM;
      }
      memcpy(m + hn, p1, n1);
      rc = conn_write_pieces(c, m, hn + n1, p2, n2, p3, n3);
      free(m);
      return rc;
    }
    rc = n1 ? (n2 ? conn_write_pieces(c, head, hn, p1, n1, p2, n2)
                  : conn_write_pieces(c, head, hn, p1, n1, p3, n3))
            : conn_write_pieces(c, head, hn, p2, n2, p3, n3);
    free(head);
    return rc;
  }
  return conn_write_pieces(c, p1, n1, p2, n2, p3, n3);
}

static int conn_write_pieces(cpx_conn_t *c, const char *p1, size_t n1,
                             const char *p2, size_t n2, const char *p3,
                             size_t n3) {
  size_t total = n1 + n2 + n3;
  conn_write_t *w;
  int rc;

  if (c->closing)
    return CPX_ECLOSED;
  if (total == 0)
    return 0;
  if (c->write_queued == 0) {
    /* Nothing queued: write now. A completed uv_write costs a copy and,
     * through libuv's drain, an epoll_ctl per response. What the socket
     * does not take is queued below; an error takes the queued path too,
     * which reports it the usual way. */
    uv_buf_t b[3];
    unsigned nb = 0;
    int done;
    if (n1)
      b[nb++] = uv_buf_init((char *)p1, (unsigned)n1);
    if (n2)
      b[nb++] = uv_buf_init((char *)p2, (unsigned)n2);
    if (n3)
      b[nb++] = uv_buf_init((char *)p3, (unsigned)n3);
    done = uv_try_write((uv_stream_t *)&c->tcp, b, nb);
    if (done > 0) {
      size_t d = (size_t)done;
      if (d == total)
        return 0;
      /* drop what went out from the front of the pieces */
      if (d >= n1) {
        d -= n1;
        n1 = 0;
        if (d >= n2) {
          d -= n2;
          n2 = 0;
          p3 += d;
          n3 -= d;
        } else {
          p2 += d;
          n2 -= d;
        }
      } else {
        p1 += d;
        n1 -= d;
      }
      total = n1 + n2 + n3;
    }
  }
  w = malloc(sizeof(*w) + total);
  if (!w)
    return CPX_ENOMEM;
  if (n1)
    memcpy(w->data, p1, n1);
  if (n2)
    memcpy(w->data + n1, p2, n2);
  if (n3)
    memcpy(w->data + n1 + n2, p3, n3);
  w->conn = c;
  w->len = total;
  w->buf = uv_buf_init(w->data, (unsigned int)total);
  rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_write_done);
  if (rc < 0) {
    free(w);
    return rc;
  }
  c->write_queued += total;
  if (c->state == CONN_ACTIVE && c->timer_mode != CONN_ACTIVE) {
    conn_timer_arm(c, c->srv->cfg.write_stall_ms, CONN_ACTIVE);
  }
  return 0;
}

static int tls_cipher_out(void *ud, const char *buf, size_t len) {
  return conn_write_raw(ud, buf, len, NULL, 0, NULL, 0) < 0 ? 1 : 0;
}

/* Writes up to three plaintext pieces as one unit. */
static int conn_write(cpx_conn_t *c, const char *p1, size_t n1, const char *p2,
                      size_t n2, const char *p3, size_t n3) {
  if (!c->tls)
    return conn_write_raw(c, p1, n1, p2, n2, p3, n3);
  const char *ps[3] = {p1, p2, p3};
  size_t ns[3] = {n1, n2, n3};
  for (int i = 0; i < 3; i++) {
    if (!ns[i])
      continue;
    int rc = cpx_tls_conn_write(c->tls, ps[i], ns[i], tls_cipher_out, c);
    if (rc != 0)
      return rc < 0 ? rc : CPX_EIO;
  }
  return 0;
}

/* Before the loop waits: every head still held goes out on its own (the
 * first event did not come in time). A loop that will not wait (idle work
 * queued: the upstream client hands a piped stream's held bytes over from
 * its idle handle, one turn after req:start) keeps them for at most two
 * more turns, so that the head still leaves with the first event. */
static void flush_held(uv_prepare_t *h) {
  cpx_server_t *srv = h->data;
  if (uv_backend_timeout(srv->loop) == 0 && srv->held_turns++ < 2)
    return;
  srv->held_turns = 0;
  while (srv->held) {
    cpx_conn_t *c = srv->held;
    if (conn_write_raw(c, NULL, 0, NULL, 0, NULL, 0) != 0)
      conn_close(c);
  }
  uv_prepare_stop(h);
}

/* ---- timers ------------------------------------------------------------- */

static void conn_error_write(cpx_conn_t *c, int status, const char *msg);

static void on_conn_timer(uv_timer_t *t) {
  cpx_conn_t *c = t->data;
  int mode = c->timer_mode;

  c->timer_mode = -1;
  switch (mode) {
  case CONN_IDLE:
    conn_close(c);
    break;
  case CONN_HEADERS:
  case CONN_BODY:
    cpx_access_log_reject(408, c->remote, "request not received in time");
    conn_error_write(c, 408, "request timeout");
    break;
  case CONN_ACTIVE:
    cpx_log_warn(c->active ? c->active->rid : NULL,
                 "client stopped reading for too long: closing");
    conn_close(c);
    break;
  case CONN_LINGER:
  default:
    conn_close(c);
    break;
  }
}

static void conn_timer_arm(cpx_conn_t *c, uint64_t ms, int mode) {
  if (c->closing)
    return;
  c->timer_mode = mode;
  uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

/* ---- requests ----------------------------------------------------------- */

void cpx_request_ref(cpx_request_t *r) {
  r->refs++;
}

void cpx_request_unref(cpx_request_t *r) {
  if (--r->refs > 0)
    return;
  if (r->on_free)
    r->on_free(r);
  cpx_http_request_free(&r->http);
  free(r);
}

const char *cpx_request_header(const cpx_request_t *r, const char *name,
                               size_t *n) {
  return cpx_http_header(&r->http, name, n);
}

size_t cpx_request_queued(const cpx_request_t *r) {
  return r->conn ? r->conn->write_queued : 0;
}

int cpx_request_congested(const cpx_request_t *r) {
  return r->conn && r->conn->write_queued > r->srv->cfg.write_high_water;
}

static int header_is(const cpx_header_t *h, const char *name) {
  size_t n = strlen(name);
  return h->name.n == n && strncasecmp(h->name.p, name, n) == 0;
}

/* Serialises the status line and headers into a malloc'd buffer. */
static char *build_head(cpx_request_t *r, int status,
                        const cpx_header_t *headers, size_t nheaders,
                        long long content_length, int chunked, size_t *outlen) {
  size_t cap = 256;
  size_t len = 0;
  char *buf;
  int keep;

  for (size_t i = 0; i < nheaders; i++)
    cap += headers[i].name.n + headers[i].value.n + 4;
  buf = malloc(cap);
  if (!buf)
    return NULL;
  len += (size_t)snprintf(buf + len, cap - len, "HTTP/1.1 %d %s\r\n", status,
                          cpx_http_reason(status));
  for (size_t i = 0; i < nheaders; i++) {
    const cpx_header_t *h = &headers[i];
    /* Framing and connection headers are ours to decide. */
    if (header_is(h, "content-length") || header_is(h, "transfer-encoding") ||
        header_is(h, "connection") || header_is(h, "keep-alive"))
      continue;
    memcpy(buf + len, h->name.p, h->name.n);
    len += h->name.n;
    buf[len++] = ':';
    buf[len++] = ' ';
    memcpy(buf + len, h->value.p, h->value.n);
    len += h->value.n;
    buf[len++] = '\r';
    buf[len++] = '\n';
  }
  keep = r->http.keep_alive && !r->close_after && !r->srv->draining &&
         !r->http.upgrade;
  if (!keep)
    r->close_after = 1;
  if (chunked)
    len += (size_t)snprintf(buf + len, cap - len,
                            "Transfer-Encoding: chunked\r\n");
  else if (content_length >= 0)
    len += (size_t)snprintf(buf + len, cap - len, "Content-Length: %lld\r\n",
                            content_length);
  len += (size_t)snprintf(buf + len, cap - len, "Connection: %s\r\n\r\n",
                          keep ? "keep-alive" : "close");
  *outlen = len;
  return buf;
}

int cpx_request_respond(cpx_request_t *r, int status,
                        const cpx_header_t *headers, size_t nheaders,
                        const char *body, size_t len) {
  size_t hlen;
  char *head;
  int rc, is_head;

  if (r->headers_sent || r->finished)
    return CPX_ESTATE;
  r->status = status;
  r->headers_sent = 1;
  if (!r->conn) {
    request_done(r);
    return CPX_ECLOSED;
  }
  is_head = r->http.method && strcmp(r->http.method, "HEAD") == 0;
  /* 1xx, 204 and 304 carry no body and no Content-Length. */
  int no_body =
      status == 204 || status == 304 || (status >= 100 && status < 200);
  head = build_head(r, status, headers, nheaders, no_body ? -1 : (long long)len,
                    0, &hlen);
  if (!head)
    return CPX_ENOMEM;
  rc = conn_write(r->conn, head, hlen, (is_head || no_body) ? NULL : body,
                  (is_head || no_body) ? 0 : len, NULL, 0);
  free(head);
  if (rc == 0)
    r->bytes_out += len;
  request_done(r);
  return rc;
}

int cpx_request_start(cpx_request_t *r, int status, const cpx_header_t *headers,
                      size_t nheaders) {
  size_t hlen;
  char *head;
  int rc;

  if (r->headers_sent || r->finished)
    return CPX_ESTATE;
  r->status = status;
  r->headers_sent = 1;
  r->streaming = 1;
  cpx_metrics_inflight(0, 1); /* [metrics] */
  if (!r->conn)
    return CPX_ECLOSED;
  r->chunked = r->http.http_major == 1 && r->http.http_minor >= 1;
  if (!r->chunked)
    r->close_after = 1; /* HTTP/1.0: the end of the body is the close */
  head = build_head(r, status, headers, nheaders, -1, r->chunked, &hlen);
  if (!head)
    return CPX_ENOMEM;
  if (!r->conn->tls && !r->conn->held && r->srv->flush_open) {
    /* Held for the first event, which usually follows in this loop
     * iteration or the next one's idle phase: one write (and one wake-up
     * of the client) instead of two. */
    cpx_conn_t *c = r->conn;
    c->held = head;
    c->held_len = hlen;
    c->held_next = r->srv->held;
    if (c->held_next)
      c->held_next->held_prev = &c->held_next;
    c->held_prev = &r->srv->held;
    r->srv->held = c;
    if (!uv_is_active((uv_handle_t *)&r->srv->flush))
      uv_prepare_start(&r->srv->flush, flush_held);
    return 0;
  }
  rc = conn_write(r->conn, head, hlen, NULL, 0, NULL, 0);
  free(head);
  return rc;
}

int cpx_request_write(cpx_request_t *r, const char *data, size_t len) {
  char size_line[32];
  int n;

  if (!r->streaming || r->finished)
    return CPX_ESTATE;
  if (!r->conn)
    return CPX_ECLOSED;
  if (len == 0)
    return 0;
  r->bytes_out += len;
  if (!r->chunked)
    return conn_write(r->conn, data, len, NULL, 0, NULL, 0);
  n = snprintf(size_line, sizeof(size_line), "%zx\r\n", len);
  return conn_write(r->conn, size_line, (size_t)n, data, len, "\r\n", 2);
}

int cpx_request_finish(cpx_request_t *r) {
  int rc = 0;

  if (!r->streaming || r->finished)
    return CPX_ESTATE;
  if (r->conn && r->chunked)
    rc = conn_write(r->conn, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
  else if (r->conn && r->conn->held) /* HTTP/1.0 with no body written */
    rc = conn_write_raw(r->conn, NULL, 0, NULL, 0, NULL, 0);
  request_done(r);
  return rc;
}

void cpx_request_abort(cpx_request_t *r) {
  if (r->finished)
    return;
  r->on_abort = NULL;
  if (r->conn)
    conn_close(r->conn); /* marks it aborted and ends it */
  else
    request_done(r);
}

/* The response is complete (or the client is gone): log it and let the
 * connection move on to the next request. */
static void request_done(cpx_request_t *r) {
  cpx_conn_t *c = r->conn;

  if (r->finished)
    return;
  r->finished = 1;
  cpx_access_log_done(r);
  r->srv->active_requests--;
  cpx_metrics_inflight(-1, r->streaming ? -1 : 0); /* [metrics] */
  if (!c) {
    if (r->srv->draining && r->srv->active_requests == 0 && r->srv->on_drained)
      r->srv->on_drained(r->srv);
    return;
  }
  c->active = NULL;
  r->conn = NULL;
  if (r->close_after) {
    c->close_when_flushed = 1;
    conn_flushed(c);
  } else {
    c->state = CONN_IDLE;
    conn_timer_arm(c, c->srv->cfg.keepalive_timeout_ms, CONN_IDLE);
  }
  cpx_request_unref(r);
  if (c->srv->draining && c->srv->active_requests == 0 && c->srv->on_drained)
    c->srv->on_drained(c->srv);
  if (!c->close_when_flushed && !c->closing) {
    /* Pipelined bytes may already hold the next request. */
    conn_start_reading(c);
    if (c->pending_len)
      conn_process(c);
  }
}

/* ---- reading and parsing ------------------------------------------------ */

/* An answer before there is a request object: the body in the client's
 * envelope as far as the target is parsed, the CORS/JSON header set, and
 * the connection closes. */
static void conn_error_write(cpx_conn_t *c, int status, const char *msg) {
  const cpx_http_request_t *h = &c->parser.req;
  int fmt = cpx_errbody_format(h->buf ? h->buf + h->url_off : NULL,
                               h->buf ? h->url_len : 0);
  char body[512], head[512];
  int bn, hn;
  size_t i;

  bn = cpx_errbody(body, sizeof(body), fmt, status, NULL, NULL, msg);
  if (bn < 0)
    bn = cpx_errbody(body, sizeof(body), fmt, status, NULL, NULL,
                     cpx_http_reason(status));
  hn = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n", status,
                cpx_http_reason(status));
  for (i = 0; i < CPX_JSON_HEADERS_N; i++)
    hn +=
        snprintf(head + hn, sizeof(head) - (size_t)hn, "%.*s: %.*s\r\n",
                 (int)cpx_json_headers[i].name.n, cpx_json_headers[i].name.p,
                 (int)cpx_json_headers[i].value.n, cpx_json_headers[i].value.p);
  hn += snprintf(head + hn, sizeof(head) - (size_t)hn,
                 "Content-Length: %d\r\nConnection: close\r\n\r\n", bn);
  c->close_when_flushed = 1;
  /* The request was not (fully) read: from here on input is discarded
   * (on_read), and the lingering clock covers the flush as well, so a
   * client that neither reads nor sends is still let go. */
  if (c->srv->cfg.lingering_time_ms) {
    conn_linger_arm(c);
  } else {
    /* No lingering: the answer still goes out, then the close. */
    uv_timer_stop(&c->timer);
    c->timer_mode = -1;
  }
  if (conn_write(c, head, (size_t)hn, body, (size_t)bn, NULL, 0) != 0)
    conn_close(c);
  else
    conn_flushed(c);
}

static void error_response(cpx_conn_t *c, int status, const char *reason) {
  char note[256];
  snprintf(note, sizeof(note), "rejected: %s", reason ? reason : "");
  cpx_access_log_reject(status, c->remote, note);
  uv_timer_stop(&c->timer);
  c->timer_mode = -1;
  conn_error_write(c, status, reason ? reason : cpx_http_reason(status));
}

static void dispatch(cpx_conn_t *c) {
  cpx_server_t *srv = c->srv;
  cpx_request_t *r = calloc(1, sizeof(*r));

  if (!r) {
    error_response(c, 500, "out of memory");
    return;
  }
  r->srv = srv;
  r->conn = c;
  r->refs = 1; /* the connection's reference */
  r->start_ns = uv_hrtime();
  snprintf(r->remote, sizeof(r->remote), "%s", c->remote);
  {
    /* Request ids only need to be distinct in the logs: a per-thread
     * xorshift seeded once from the CSPRNG (RAND_bytes per request cost
     * more than the whole access log line). */
    static __thread uint64_t state;
    if (state == 0 &&
        (RAND_bytes((unsigned char *)&state, sizeof(state)) != 1 || state == 0))
      state = r->start_ns | 1;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    snprintf(r->rid, sizeof(r->rid), "%08x", (unsigned)(state >> 32));
  }
  cpx_http_take_request(&c->parser, &r->http);
  if (srv->draining)
    r->close_after = 1;
  c->active = r;
  c->state = CONN_ACTIVE;
  uv_timer_stop(&c->timer);
  c->timer_mode = -1;
  srv->active_requests++;
  cpx_metrics_inflight(1, 0); /* [metrics] */
  srv->on_request(srv, r);
}

enum { STEP_MORE, STEP_AGAIN, STEP_DISPATCH, STEP_ERROR };

/* One parser step over in[0..n): *used gets the bytes consumed; the
 * timers and 100-continue are handled here, dispatching and errors by the
 * caller (after it has put the unconsumed bytes where they belong). */
static int conn_step(cpx_conn_t *c, const char *in, size_t n, size_t *used) {
  if (c->state == CONN_IDLE) {
    c->state = CONN_HEADERS;
    conn_timer_arm(c, c->srv->cfg.header_timeout_ms, CONN_HEADERS);
  }
  *used = 0;
  switch (cpx_http_feed(&c->parser, in, n, used)) {
  case CPX_HTTP_NEED_MORE:
    if (c->state == CONN_BODY)
      conn_timer_arm(c, c->srv->cfg.body_timeout_ms, CONN_BODY);
    return STEP_MORE;
  case CPX_HTTP_HEADERS_DONE:
    c->state = CONN_BODY;
    conn_timer_arm(c, c->srv->cfg.body_timeout_ms, CONN_BODY);
    if (c->parser.req.expect_continue && c->parser.req.has_body &&
        c->parser.req.http_minor >= 1) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      conn_write(c, cont, sizeof(cont) - 1, NULL, 0, NULL, 0);
    }
    return STEP_AGAIN;
  case CPX_HTTP_DONE:
    return STEP_DISPATCH;
  default:
    return STEP_ERROR;
  }
}

static void conn_parse_error(cpx_conn_t *c) {
  error_response(c, c->parser.error_status ? c->parser.error_status : 400,
                 c->parser.error_reason);
}

static int conn_can_parse(const cpx_conn_t *c) {
  return !c->closing && !c->close_when_flushed && !c->active &&
         c->state != CONN_LINGER;
}

/* Runs the parser over pending input until it needs more bytes, a request
 * is dispatched, or the connection is being closed. */
static void conn_process(cpx_conn_t *c) {
  while (conn_can_parse(c) && c->pending_len > 0) {
    size_t used;
    int step = conn_step(c, c->pending, c->pending_len, &used);
    if (used) {
      memmove(c->pending, c->pending + used, c->pending_len - used);
      c->pending_len -= used;
    }
    if (step == STEP_AGAIN)
      continue;
    if (step == STEP_DISPATCH)
      dispatch(c);
    else if (step == STEP_ERROR)
      conn_parse_error(c);
    return;
  }
}

static int pending_append(cpx_conn_t *c, const char *p, size_t n);

/* conn_process for the common case: nothing is buffered, so the parser
 * runs straight over the read buffer and only bytes left over are copied
 * (a 78 KB body would otherwise be copied once more). Bytes after a
 * complete request go to pending before it is dispatched, where a
 * synchronous answer's request_done looks for the next one. */
static void conn_process_direct(cpx_conn_t *c, const char *in, size_t n) {
  while (n && conn_can_parse(c)) {
    size_t used;
    int step = conn_step(c, in, n, &used);
    in += used;
    n -= used;
    if (step == STEP_AGAIN || (step == STEP_MORE && used > 0))
      continue;
    if (step == STEP_MORE)
      break;
    if (step == STEP_DISPATCH) {
      if (n && pending_append(c, in, n) != 0) {
        conn_close(c);
        return;
      }
      dispatch(c);
    } else {
      conn_parse_error(c);
    }
    return;
  }
  if (n && !c->closing && pending_append(c, in, n) != 0)
    conn_close(c);
}

static int pending_append(cpx_conn_t *c, const char *p, size_t n) {
  return cpx_buf_append(&c->pending, &c->pending_len, &c->pending_cap, p, n);
}

static int tls_plain_in(void *ud, const char *buf, size_t len) {
  cpx_conn_t *c = ud;
  return pending_append(c, buf, len) ? 1 : 0;
}

/* Reads land in a per-thread slab and are parsed from there, except the
 * rest of a Content-Length body, which is read straight into the request's
 * body buffer (cpx_http_body_room). A read that may begin a request takes
 * 8 KiB at most, so that most of a large body arrives by the second path
 * instead of being copied out of the slab. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static __thread char slab[65536];
  cpx_conn_t *c = h->data;
  char *p;
  size_t n;
  CPX_UNUSED(suggested);
  if (!c->tls && c->state == CONN_BODY && !c->close_when_flushed &&
      c->pending_len == 0 && !c->active &&
      cpx_http_body_room(&c->parser, &p, &n)) {
    *buf = uv_buf_init(p, (unsigned)n);
    return;
  }
  *buf = uv_buf_init(slab, (c->state == CONN_IDLE || c->state == CONN_HEADERS)
                               ? 8192
                               : sizeof(slab));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  cpx_conn_t *c = s->data;

  if (nread < 0) {
    /* EOF or error: a client that leaves cancels its request. */
    conn_close(c);
    return;
  }
  if (nread == 0)
    return;
  if (c->state == CONN_LINGER || c->close_when_flushed) {
    /* Nothing more will be parsed on this connection: drop the bytes
     * (keeping them is how a 42 MB body to a 413 would end up in memory). */
    c->lingered += (size_t)nread;
    if (c->lingered > c->srv->cfg.lingering_max_bytes)
      conn_close(c);
    else if (c->state == CONN_LINGER)
      conn_linger_arm(c);
    return;
  }
  if (c->tls) {
    int rc = cpx_tls_conn_feed(c->tls, buf->base, (size_t)nread, tls_plain_in,
                               tls_cipher_out, c);
    if (rc != 0) {
      conn_close(c);
      return;
    }
  } else if (c->pending_len == 0 && !c->active) {
    conn_process_direct(c, buf->base, (size_t)nread);
    return;
  } else if (pending_append(c, buf->base, (size_t)nread) != 0) {
    conn_close(c);
    return;
  }
  if (c->active) {
    if (c->pending_len > CPX_CONN_PENDING_MAX && c->reading) {
      uv_read_stop(s);
      c->reading = 0;
    }
    return;
  }
  conn_process(c);
}

static void conn_start_reading(cpx_conn_t *c) {
  if (c->reading || c->closing)
    return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
    c->reading = 1;
}

/* ---- connection lifecycle ----------------------------------------------- */

static void on_conn_handle_closed(uv_handle_t *h) {
  cpx_conn_t *c = h->data;
  if (--c->handles_open > 0)
    return;
  cpx_http_parser_free(&c->parser);
  if (c->tls)
    cpx_tls_conn_free(c->tls);
  free(c->pending);
  free(c);
}

static void conn_close(cpx_conn_t *c) {
  cpx_server_t *srv = c->srv;
  cpx_request_t *r = c->active;

  if (c->closing)
    return;
  c->closing = 1;
  held_unlink(c);
  free(c->held);
  c->held = NULL;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->nconns--;
  ip_release(srv, c);
  if (r) {
    c->active = NULL;
    r->conn = NULL;
    if (!r->finished) {
      r->aborted = 1;
      if (r->on_abort)
        r->on_abort(r);
      if (!r->finished)
        request_done(r);
    }
    cpx_request_unref(r);
  }
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

/* The address a per-address count keys on: IPv4 as is (an IPv4-mapped
 * IPv6 address too), IPv6 by its /64, since one host (or one customer of a
 * provider) usually owns a whole /64 and could otherwise take a new
 * address per connection. */
static void ip_key(const struct sockaddr_storage *ss, uint8_t key[16]) {
  memset(key, 0, 16);
  if (ss->ss_family == AF_INET6) {
    const uint8_t *a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0,    0,
                                       0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0) {
      memcpy(key, a + 12, 4);
    } else {
      memcpy(key, a, 8);
      key[15] = 6; /* never equal to an IPv4 key */
    }
  } else if (ss->ss_family == AF_INET) {
    memcpy(key, &((const struct sockaddr_in *)ss)->sin_addr, 4);
  }
}

static size_t ip_bucket(const uint8_t key[16]) {
  uint64_t a, b;
  memcpy(&a, key, 8);
  memcpy(&b, key + 8, 8);
  uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ull)) * 0xD6E8FEB86659FD93ull;
  return (size_t)(h >> 40) & (CPX_IP_BUCKETS - 1);
}

/* Counts c against its address. Returns the address's count including c,
 * or 0 when the table or an entry cannot be allocated (then c is not
 * counted, and is not refused for it). */
static size_t ip_acquire(cpx_server_t *srv, cpx_conn_t *c,
                         const struct sockaddr_storage *ss) {
  uint8_t key[16];
  cpx_ip_count_t *e;
  size_t b;

  if (!srv->ip_buckets) {
    srv->ip_buckets = calloc(CPX_IP_BUCKETS, sizeof(*srv->ip_buckets));
    if (!srv->ip_buckets)
      return 0;
  }
  ip_key(ss, key);
  b = ip_bucket(key);
  for (e = srv->ip_buckets[b]; e; e = e->next)
    if (memcmp(e->addr, key, 16) == 0)
      break;
  if (!e) {
    e = calloc(1, sizeof(*e));
    if (!e)
      return 0;
    memcpy(e->addr, key, 16);
    e->next = srv->ip_buckets[b];
    srv->ip_buckets[b] = e;
  }
  e->count++;
  c->ip = e;
  return e->count;
}

static void ip_release(cpx_server_t *srv, cpx_conn_t *c) {
  cpx_ip_count_t *e = c->ip, **pp;
  if (!e)
    return;
  c->ip = NULL;
  if (--e->count > 0)
    return;
  for (pp = &srv->ip_buckets[ip_bucket(e->addr)]; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      break;
    }
  free(e);
}

static void on_connection(uv_stream_t *server, int status) {
  cpx_server_t *srv = server->data;
  cpx_conn_t *c;
  struct sockaddr_storage ss;
  int namelen = sizeof(ss);
  int over, over_ip = 0;

  if (status < 0) {
    cpx_log_warn(NULL, "accept failed: %s", uv_strerror(status));
    return;
  }
  c = calloc(1, sizeof(*c));
  if (!c)
    return;
  c->srv = srv;
  c->timer_mode = -1;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  memset(&ss, 0, sizeof(ss));
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &namelen) == 0) {
    if (ss.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&ss, c->remote, sizeof(c->remote));
    else
      uv_ip4_name((struct sockaddr_in *)&ss, c->remote, sizeof(c->remote));
  }
  cpx_http_parser_init(&c->parser, &srv->cfg.http);
  if (srv->tls && cpx_tls_conn_new(srv->tls, &c->tls) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    return;
  }
  over = srv->cfg.max_connections && srv->nconns >= srv->cfg.max_connections;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  /* Counted (when the limit is on) before deciding, so that a refused
   * connection, which lingers, still counts against its address. */
  if (srv->cfg.max_connections_per_ip && ss.ss_family != 0)
    over_ip = ip_acquire(srv, c, &ss) > srv->cfg.max_connections_per_ip;
  conn_start_reading(c);
  if (over || over_ip) {
    /* Accepted only to say why: a 503 the client can read (lingering
     * close) beats a refused or reset connection it would retry at once.
     * Over TLS the answer would need a handshake first: just close. */
    uint64_t now = uv_hrtime();
    srv->over_unlogged++;
    if (now - srv->over_logged_ns >= 1000000000ull || !srv->over_logged_ns) {
      char note[256];
      snprintf(note, sizeof(note),
               "rejected: too many connections%s (limit %zu; "
               "%lu refused since the last such line)",
               over ? "" : " from this address",
               over ? (size_t)srv->cfg.max_connections
                    : (size_t)srv->cfg.max_connections_per_ip,
               srv->over_unlogged);
      cpx_access_log_reject(503, c->remote, note);
      srv->over_logged_ns = now;
      srv->over_unlogged = 0;
    }
    if (c->tls) {
      conn_close(c);
    } else {
      uv_timer_stop(&c->timer);
      c->timer_mode = -1;
      conn_error_write(c, 503,
                       over ? "too many connections"
                            : "too many connections from this address");
    }
    return;
  }
  /* The keep-alive idle timeout also bounds a connection that never sends
   * its first byte; the header timeout starts at that byte. */
  conn_timer_arm(c, srv->cfg.header_timeout_ms, CONN_IDLE);
}

int cpx_server_init(cpx_server_t *srv, uv_loop_t *loop,
                    const cpx_server_config_t *cfg, cpx_tls_ctx_t *tls) {
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->cfg = *cfg;
  srv->tls = tls;
  /* The listener is created in cpx_server_listen, once the address family
   * is known: SO_REUSEPORT must be set on the socket before bind. */
  uv_timer_init(loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  uv_prepare_init(loop, &srv->flush);
  srv->flush.data = srv;
  srv->flush_open = 1;
  cpx_access_log_init(&srv->access, loop);
  return 0;
}

int cpx_server_listen(cpx_server_t *srv, char *err, size_t errlen) {
  struct sockaddr_storage addr;
  const char *host = srv->cfg.host[0] ? srv->cfg.host : "0.0.0.0";
  int rc;

  if (strchr(host, ':'))
    rc = uv_ip6_addr(host, srv->cfg.port, (struct sockaddr_in6 *)&addr);
  else
    rc = uv_ip4_addr(strcmp(host, "localhost") == 0 ? "127.0.0.1" : host,
                     srv->cfg.port, (struct sockaddr_in *)&addr);
  if (rc != 0) {
    snprintf(err, errlen, "invalid listen address %s:%d", host, srv->cfg.port);
    return CPX_EINVAL;
  }
  rc = uv_tcp_init_ex(srv->loop, &srv->listener, addr.ss_family);
  if (rc != 0) {
    snprintf(err, errlen, "cannot create a socket: %s", uv_strerror(rc));
    return rc;
  }
  srv->listener.data = srv;
  srv->listener_open = 1;
  if (srv->cfg.reuse_port) {
    uv_os_fd_t fd;
    /* SO_REUSEPORT lets every worker own a listener on the same port. */
    if (uv_fileno((uv_handle_t *)&srv->listener, &fd) == 0) {
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
  }
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s:%d: %s", host, srv->cfg.port,
             uv_strerror(rc));
    return rc;
  }
  srv->listening = 1;
  return 0;
}

void cpx_server_update_config(cpx_server_t *srv,
                              const cpx_server_config_t *cfg) {
  char host[256];
  int port = srv->cfg.port;
  memcpy(host, srv->cfg.host, sizeof(host));
  srv->cfg = *cfg;
  /* The socket stays where it is; a new address needs a restart. */
  memcpy(srv->cfg.host, host, sizeof(host));
  srv->cfg.port = port;
}

static void on_drain_deadline(uv_timer_t *t) {
  cpx_server_t *srv = t->data;
  cpx_conn_t *c = srv->conns;

  cpx_log_warn(NULL, "drain deadline reached: ending %zu request(s)",
               srv->active_requests);
  while (c) {
    cpx_conn_t *next = c->next;
    cpx_request_t *r = c->active;
    if (r && !r->finished) {
      cpx_request_ref(r);
      if (r->on_shutdown)
        r->on_shutdown(r);
      if (!r->finished && r->conn)
        conn_close(c);
      cpx_request_unref(r);
    } else if (!c->closing && c->write_queued == 0) {
      conn_close(c);
    }
    c = next;
  }
  if (srv->active_requests == 0 && srv->on_drained)
    srv->on_drained(srv);
}

static void noop_close(uv_handle_t *h) {
  CPX_UNUSED(h);
}

void cpx_server_drain(cpx_server_t *srv) {
  cpx_conn_t *c;

  if (srv->draining)
    return;
  srv->draining = 1;
  if (srv->listener_open && !uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, noop_close);
  srv->listening = 0;
  for (c = srv->conns; c;) {
    cpx_conn_t *next = c->next;
    if (!c->active && c->write_queued == 0)
      conn_close(c);
    c = next;
  }
  if (srv->active_requests == 0) {
    if (srv->on_drained)
      srv->on_drained(srv);
    return;
  }
  cpx_log_info(NULL, "draining %zu request(s), up to %llu ms",
               srv->active_requests,
               (unsigned long long)srv->cfg.drain_timeout_ms);
  uv_timer_start(&srv->drain_timer, on_drain_deadline,
                 srv->cfg.drain_timeout_ms, 0);
}

void cpx_server_close(cpx_server_t *srv) {
  if (srv->closed)
    return;
  srv->closed = 1;
  /* First, so the requests the closes end are written at once. */
  cpx_access_log_close(&srv->access);
  while (srv->conns)
    conn_close(srv->conns);
  /* Every connection released its address entry in conn_close. */
  free(srv->ip_buckets);
  srv->ip_buckets = NULL;
  if (srv->listener_open && !uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, noop_close);
  if (!uv_is_closing((uv_handle_t *)&srv->drain_timer))
    uv_close((uv_handle_t *)&srv->drain_timer, noop_close);
  if (srv->flush_open && !uv_is_closing((uv_handle_t *)&srv->flush))
    uv_close((uv_handle_t *)&srv->flush, noop_close);
  srv->flush_open = 0;
}
