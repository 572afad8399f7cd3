/* cpx_h1.c: HTTP/1.1 client over libuv + llhttp with a keep-alive pool
 * (see cpx_h1.h for why this exists beside libcurl).
 *
 * A connection is busy (one request) or idle (in its endpoint's LIFO list,
 * still reading so that a close by the server is seen at once). The last
 * used connection is reused first: it is the one least likely to have been
 * closed by the server's own keep-alive timeout.
 *
 * A request that fails on a reused connection before any response byte
 * arrived is sent once more on a fresh connection: the server most likely
 * closed the idle connection while the request was on its way (curl and
 * browsers do the same).
 *
 * An https connection reads ciphertext into cpx_tls_conn_feed, which hands
 * the plaintext to the same parser; what OpenSSL writes is gathered in the
 * connection's out buffer and flushed to the socket after each step (one
 * write per flight, never a blocking call). The connect timer runs until
 * the handshake is done, as curl's CURLOPT_CONNECTTIMEOUT does.
 */
#include "cpx_h1.h"

#include "cpx_buf.h"

#include <stdlib.h>
#include <string.h>

typedef struct endpoint_s {
  struct endpoint_s *next;
  char *host;
  int port;
  int tls;
  /* Sessions the server gave, newest last; owned. TLS 1.3 tickets are
   * single use (RFC 8446 C.4; OpenSSL will not offer one twice) and servers
   * hand out two per full handshake, often none after a resumption: one
   * kept session would let only every other new connection resume. */
  cpx_tls_session_t *sessions[CPX_H1_MAX_SESSIONS];
  int nsessions;
  cpx_h1_conn_t *idle; /* LIFO through next_idle */
  size_t nidle;
} endpoint_t;

enum { C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_BUSY, C_IDLE, C_CLOSING };
enum { T_NONE, T_CONNECT, T_FIRST_BYTE, T_IDLE, T_KEEPALIVE };

#define RBUF_SIZE (64 * 1024)

struct cpx_h1_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_connect_t connect;
  uv_write_t write;
  uv_getaddrinfo_t gai;
  cpx_h1_pool_t *pool;
  endpoint_t *ep;
  cpx_h1_req_t *req; /* NULL when idle */
  cpx_h1_conn_t *next_idle;
  llhttp_t parser;
  int state;
  int timer_mode;
  int pending;   /* close callbacks and a name lookup still to come */
  int reused;    /* has served a request before this one */
  int writing;   /* writes in flight */
  int reading;   /* uv_read_start is on */
  int msg_done;  /* on_message_complete seen */
  int cancelled; /* cpx_h1_cancel ran inside llhttp_execute */
  int stopped;   /* a callback returned non-zero inside llhttp_execute */
  int extra;     /* bytes followed the response in the same read */
  char *rbuf;    /* RBUF_SIZE; owned */
  /* https: the TLS state (owned) and the ciphertext not yet handed to a
   * write (owned; a write takes the buffer with it). */
  cpx_tls_conn_t *tls;
  char *obuf;
  size_t olen, ocap;
  /* The name's addresses (owned, freed with the connection) and the one
   * being tried: a refused connect moves on to the next, as curl does
   * ("localhost" is often ::1 first, and servers often listen on
   * 127.0.0.1 only). */
  struct addrinfo *ai_head, *ai_cur;
};

static llhttp_settings_t settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static void conn_close(cpx_h1_conn_t *c);
static void conn_fail(cpx_h1_conn_t *c, int rc);
static int conn_open(cpx_h1_pool_t *p, endpoint_t *ep, cpx_h1_req_t *q);
static int conn_open_at(cpx_h1_pool_t *p, endpoint_t *ep, cpx_h1_req_t *q,
                        struct addrinfo *head, struct addrinfo *at);

/* ---- helpers ------------------------------------------------------------ */

static void timer_arm(cpx_h1_conn_t *c, int mode, uint64_t ms);

/* The timeouts that apply to q: its own or the pool's. */
static const cpx_h1_timeouts_t *req_to(const cpx_h1_req_t *q) {
  return q->to ? q->to : &q->pool->to;
}

static void on_timer(uv_timer_t *t) {
  cpx_h1_conn_t *c = t->data;
  int mode = c->timer_mode;
  c->timer_mode = T_NONE;
  if (mode == T_KEEPALIVE || !c->req) {
    conn_close(c);
    return;
  }
  /* The texts of the libcurl client, so both paths read alike. */
  c->req->err = mode == T_CONNECT      ? "upstream connect timeout"
                : mode == T_FIRST_BYTE ? "upstream first-byte timeout"
                                       : "upstream stream idle timeout";
  conn_fail(c, CPX_ETIMEOUT);
}

static void timer_arm(cpx_h1_conn_t *c, int mode, uint64_t ms) {
  if (c->state == C_CLOSING)
    return;
  c->timer_mode = mode;
  if (ms == 0) {
    uv_timer_stop(&c->timer);
    return;
  }
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static endpoint_t *endpoint_get(cpx_h1_pool_t *p, const char *host, int port,
                                int tls) {
  endpoint_t *e;
  tls = tls != 0;
  for (e = p->endpoints; e; e = e->next)
    if (e->port == port && e->tls == tls && strcmp(e->host, host) == 0)
      return e;
  e = calloc(1, sizeof(*e));
  if (!e)
    return NULL;
  e->host = strdup(host);
  if (!e->host) {
    free(e);
    return NULL;
  }
  e->port = port;
  e->tls = tls;
  e->next = p->endpoints;
  p->endpoints = e;
  return e;
}

static void sessions_clear(endpoint_t *e) {
  while (e->nsessions > 0)
    cpx_tls_session_free(e->sessions[--e->nsessions]);
}

static void endpoints_free(cpx_h1_pool_t *p) {
  endpoint_t *e = p->endpoints, *n;
  for (; e; e = n) {
    n = e->next;
    sessions_clear(e);
    free(e->host);
    free(e);
  }
  p->endpoints = NULL;
}

static void idle_remove(cpx_h1_conn_t *c) {
  endpoint_t *e = c->ep;
  cpx_h1_conn_t **pp;
  for (pp = &e->idle; *pp; pp = &(*pp)->next_idle) {
    if (*pp == c) {
      *pp = c->next_idle;
      e->nidle--;
      break;
    }
  }
  c->next_idle = NULL;
}

static void conn_unref(cpx_h1_conn_t *c) {
  cpx_h1_pool_t *p = c->pool;
  if (--c->pending > 0)
    return;
  if (c->ai_head)
    uv_freeaddrinfo(c->ai_head);
  cpx_tls_conn_free(c->tls);
  free(c->obuf);
  free(c->rbuf);
  free(c);
  p->nconns--;
  if (p->closed && p->nconns == 0)
    endpoints_free(p);
}

static void on_handle_closed(uv_handle_t *h) {
  conn_unref(h->data);
}

/* Closes the connection; the request (if any) must have been detached. */
static void conn_close(cpx_h1_conn_t *c) {
  if (c->state == C_CLOSING)
    return;
  if (c->state == C_IDLE)
    idle_remove(c);
  c->state = C_CLOSING;
  if (c->req)
    c->req->conn = NULL;
  c->req = NULL;
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* Forgets a response head: before a (re-)send. */
static void req_reset_head(cpx_h1_req_t *q) {
  q->status = 0;
  q->hlen = q->nfields = 0;
  q->in_field = q->head_done = 0;
  q->err = NULL;
}

/* A request starting anew on pool p. */
static void req_start(cpx_h1_pool_t *p, cpx_h1_req_t *q) {
  q->pool = p;
  q->conn = NULL;
  q->got_bytes = q->retried = q->paused = 0;
  req_reset_head(q);
}

static void req_detach(cpx_h1_req_t *q) {
  if (q->conn)
    q->conn->req = NULL;
  q->conn = NULL;
}

/* Errors after which a reused connection is presumed to have been closed
 * by the server before it saw the request. */
static int stale_error(int rc) {
  return rc == UV_EOF || rc == UV_ECONNRESET || rc == UV_EPIPE ||
         rc == CPX_EIO || rc == UV_ECONNABORTED;
}

static void conn_fail(cpx_h1_conn_t *c, int rc) {
  cpx_h1_req_t *q = c->req;
  int reused = c->reused;
  if (q)
    req_detach(q);
  conn_close(c);
  if (!q)
    return;
  if (reused && !q->got_bytes && !q->retried && stale_error(rc) &&
      !q->pool->closed) {
    endpoint_t *ep = c->ep;
    q->retried = 1;
    req_reset_head(q);
    if (conn_open(q->pool, ep, q) == 0)
      return;
  }
  if (rc == UV_EOF)
    rc = CPX_EIO;
  if (!q->err)
    q->err = rc == CPX_EPARSE ? "malformed upstream response"
             : rc == CPX_EIO  ? "upstream closed the connection"
             : rc > -10000    ? uv_strerror(rc)
                              : cpx_strerror(rc);
  q->cb->on_done(q, rc);
}

/* ---- parser callbacks --------------------------------------------------- */

static cpx_h1_req_t *preq(llhttp_t *ps) {
  cpx_h1_conn_t *c = ps->data;
  return c->req;
}

static int head_append(cpx_h1_req_t *q, const char *at, size_t n, int lower) {
  size_t at0 = q->hlen;
  if (q->hlen + n > CPX_H1_MAX_HEAD ||
      cpx_buf_append(&q->hbuf, &q->hlen, &q->hcap, at, n) != 0)
    return -1;
  if (lower)
    for (size_t i = at0; i < q->hlen; i++)
      if (q->hbuf[i] >= 'A' && q->hbuf[i] <= 'Z')
        q->hbuf[i] = (char)(q->hbuf[i] + 32);
  return 0;
}

static int on_header_field(llhttp_t *ps, const char *at, size_t n) {
  cpx_h1_req_t *q = preq(ps);
  if (!q)
    return -1;
  if (q->in_field != 1) {
    if (q->nfields >= CPX_H1_MAX_FIELDS)
      return -1;
    q->fields[q->nfields].name_off = q->hlen;
    q->fields[q->nfields].name_len = 0;
    q->in_field = 1;
  }
  if (head_append(q, at, n, 1) != 0)
    return -1;
  q->fields[q->nfields].name_len += n;
  return 0;
}

static int on_header_value(llhttp_t *ps, const char *at, size_t n) {
  cpx_h1_req_t *q = preq(ps);
  if (!q)
    return -1;
  if (q->in_field != 2) {
    q->fields[q->nfields].value_off = q->hlen;
    q->fields[q->nfields].value_len = 0;
    q->in_field = 2;
  }
  if (head_append(q, at, n, 0) != 0)
    return -1;
  q->fields[q->nfields].value_len += n;
  return 0;
}

static int on_header_value_complete(llhttp_t *ps) {
  cpx_h1_req_t *q = preq(ps);
  if (!q)
    return -1;
  if (q->in_field != 2) { /* empty value */
    q->fields[q->nfields].value_off = q->hlen;
    q->fields[q->nfields].value_len = 0;
  }
  q->nfields++;
  q->in_field = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *ps) {
  cpx_h1_conn_t *c = ps->data;
  cpx_h1_req_t *q = c->req;
  int status = (int)llhttp_get_status_code(ps);
  if (!q)
    return -1;
  if (status >= 100 && status < 200) {
    /* 100 Continue and friends: the real answer follows. */
    q->hlen = q->nfields = 0;
    q->in_field = 0;
    return 0;
  }
  q->status = status;
  q->head_done = 1;
  if (q->cb->on_head(q) != 0) {
    c->stopped = 1;
    return -1;
  }
  return c->req == q ? 0 : -1;
}

static int on_body(llhttp_t *ps, const char *at, size_t n) {
  cpx_h1_conn_t *c = ps->data;
  cpx_h1_req_t *q = c->req;
  if (!q)
    return -1;
  if (q->cb->on_body(q, at, n) != 0) {
    c->stopped = 1;
    return -1;
  }
  return c->req == q ? 0 : -1;
}

static int on_message_complete(llhttp_t *ps) {
  cpx_h1_conn_t *c = ps->data;
  if (!c->req || !c->req->head_done)
    return 0; /* a 1xx message */
  c->msg_done = 1;
  return HPE_PAUSED; /* bytes after the response are not ours to parse */
}

static void settings_init(void) {
  llhttp_settings_init(&settings);
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_header_value_complete = on_header_value_complete;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
}

/* ---- reading and writing ------------------------------------------------ */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  cpx_h1_conn_t *c = h->data;
  CPX_UNUSED(hint);
  buf->base = c->rbuf;
  buf->len = RBUF_SIZE;
}

/* The response is complete: the connection goes back to the pool when it
 * can carry another request, and the request learns its outcome. */
static void conn_done(cpx_h1_conn_t *c, int reusable) {
  cpx_h1_req_t *q = c->req;
  endpoint_t *ep = c->ep;
  req_detach(q);
  c->msg_done = 0;
  if (reusable && !c->pool->closed && ep->nidle < CPX_H1_MAX_IDLE) {
    c->state = C_IDLE;
    c->reused = 1;
    c->next_idle = ep->idle;
    ep->idle = c;
    ep->nidle++;
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    if (!c->reading &&
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
      c->reading = 1;
    timer_arm(c, T_KEEPALIVE, c->pool->to.keepalive_ms);
  } else {
    conn_close(c);
  }
  q->cb->on_done(q, 0);
}

/* After the parser ran the callbacks: a cancelled request is gone, a
 * stopped one learns it through on_done (outside the parser). Returns 1
 * when the connection is finished with. */
static int after_callbacks(cpx_h1_conn_t *c, cpx_h1_req_t *q) {
  if (c->stopped) {
    if (c->req == q)
      req_detach(q);
    conn_close(c);
    q->cb->on_done(q, CPX_ECLOSED);
    return 1;
  }
  if (c->cancelled || c->req != q) {
    conn_close(c);
    return 1;
  }
  return 0;
}

enum { P_MORE, P_MSG, P_GONE };

/* Runs the parser over response bytes. Returns P_MORE (keep reading),
 * P_MSG (the response is complete; c->extra says whether bytes followed
 * it) or P_GONE (the connection is finished with and q has been told or
 * was cancelled). */
static int conn_parse(cpx_h1_conn_t *c, cpx_h1_req_t *q, const char *p,
                      size_t n) {
  llhttp_errno_t err;
  q->got_bytes = 1;
  if (!q->paused)
    timer_arm(c, T_IDLE, req_to(q)->idle_ms);
  err = llhttp_execute(&c->parser, p, n);
  if (after_callbacks(c, q))
    return P_GONE;
  if (err == HPE_PAUSED && c->msg_done) {
    const char *pos = llhttp_get_error_pos(&c->parser);
    c->extra = pos && pos < p + n;
    return P_MSG;
  }
  if (err != HPE_OK) {
    conn_fail(c, CPX_EPARSE);
    return P_GONE;
  }
  return P_MORE;
}

/* The server closed (rc UV_EOF) or the read failed: a body delimited by
 * the close is complete, anything else is a failure. */
static void conn_eof(cpx_h1_conn_t *c, cpx_h1_req_t *q, int rc) {
  if (rc == UV_EOF && q->got_bytes) {
    llhttp_errno_t err = llhttp_finish(&c->parser);
    if (after_callbacks(c, q))
      return;
    if ((err == HPE_OK || err == HPE_PAUSED) && c->msg_done) {
      conn_done(c, 0);
      return;
    }
  }
  if (c->state == C_HANDSHAKE && !q->err)
    q->err = "upstream closed the connection during the TLS handshake";
  conn_fail(c, rc);
}

static int conn_reusable(cpx_h1_conn_t *c) {
  return !c->extra && !c->writing && llhttp_should_keep_alive(&c->parser) &&
         !(c->tls && cpx_tls_conn_pending(c->tls));
}

/* ---- TLS ----------------------------------------------------------------- */

typedef struct {
  uv_write_t req;
  cpx_h1_conn_t *c;
  char *data; /* owned: the out buffer taken from the connection */
} tls_write_t;

/* A write ended (plain or TLS). */
static void conn_written(cpx_h1_conn_t *c, int status) {
  c->writing--;
  if (status == UV_ECANCELED || c->state == C_CLOSING)
    return;
  if (status < 0) {
    if (c->req)
      conn_fail(c, status);
    else
      conn_close(c); /* answered early, then failed: not reusable */
  }
}

static void on_tls_write(uv_write_t *w, int status) {
  tls_write_t *tw = w->data;
  cpx_h1_conn_t *c = tw->c;
  free(tw->data);
  free(tw);
  conn_written(c, status);
}

/* OpenSSL's output, gathered until the step that made it is over. */
static int tls_on_cipher(void *ud, const char *p, size_t n) {
  cpx_h1_conn_t *c = ud;
  return cpx_buf_append(&c->obuf, &c->olen, &c->ocap, p, n) == 0 ? 0
                                                                 : CPX_ENOMEM;
}

/* Writes the gathered ciphertext: what the socket takes now, the rest in
 * one queued write that takes the buffer along. */
static int conn_flush(cpx_h1_conn_t *c) {
  uv_buf_t b;
  tls_write_t *tw;
  int done, rc;
  if (c->olen == 0)
    return 0;
  b = uv_buf_init(c->obuf, (unsigned)c->olen);
  done = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (done == UV_EAGAIN)
    done = 0;
  if (done < 0) {
    c->olen = 0;
    return done;
  }
  if ((size_t)done == c->olen) {
    c->olen = 0;
    return 0;
  }
  tw = malloc(sizeof(*tw));
  if (!tw)
    return CPX_ENOMEM;
  tw->c = c;
  tw->data = c->obuf;
  tw->req.data = tw;
  b = uv_buf_init(c->obuf + done, (unsigned)(c->olen - (size_t)done));
  c->obuf = NULL;
  c->olen = c->ocap = 0;
  rc = uv_write(&tw->req, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write);
  if (rc != 0) {
    free(tw->data);
    free(tw);
    return rc;
  }
  c->writing++;
  return 0;
}

/* Plaintext out of cpx_tls_conn_feed. A non-zero return stops the feed
 * (the rest stays in OpenSSL's buffers: cpx_tls_conn_pending). */
static int tls_on_plain(void *ud, const char *p, size_t n) {
  cpx_h1_conn_t *c = ud;
  cpx_h1_req_t *q = c->req;
  int r;
  if (!q || c->state != C_BUSY)
    return 1; /* bytes before the request was sent: nothing we asked for */
  r = conn_parse(c, q, p, n);
  return r == P_MORE ? 0 : r == P_MSG ? 2 : 3;
}

/* The server gave us a session: a next connection offers it. The oldest
 * goes when the list is full. */
static void tls_on_session(void *ud, cpx_tls_session_t *sess) {
  endpoint_t *e = ((cpx_h1_conn_t *)ud)->ep;
  if (e->nsessions == CPX_H1_MAX_SESSIONS) {
    cpx_tls_session_free(e->sessions[0]);
    memmove(e->sessions, e->sessions + 1,
            sizeof(e->sessions[0]) * (CPX_H1_MAX_SESSIONS - 1));
    e->nsessions--;
  }
  e->sessions[e->nsessions++] = sess;
}

/* The session a new connection offers (a reference the caller drops), or
 * NULL: the newest usable one. A single-use one leaves the list; a TLS 1.2
 * session stays (it resumes any number of times). */
static cpx_tls_session_t *session_take(endpoint_t *e) {
  while (e->nsessions > 0) {
    cpx_tls_session_t *s = e->sessions[e->nsessions - 1];
    if (!cpx_tls_session_resumable(s)) {
      cpx_tls_session_free(s);
      e->nsessions--;
      continue;
    }
    if (cpx_tls_session_single_use(s))
      e->nsessions--;
    else
      cpx_tls_session_ref(s);
    return s;
  }
  return NULL;
}

static int conn_start(cpx_h1_conn_t *c, cpx_h1_req_t *q);

static void tls_fail(cpx_h1_conn_t *c, cpx_h1_req_t *q) {
  char why[160];
  cpx_tls_conn_error(c->tls, why, sizeof(why));
  snprintf(q->errbuf, sizeof(q->errbuf), "upstream TLS %s: %s",
           c->state == C_HANDSHAKE ? "handshake failed" : "error", why);
  q->err = q->errbuf;
  conn_fail(c, CPX_EIO);
}

static void tls_read(cpx_h1_conn_t *c, cpx_h1_req_t *q, const char *p,
                     ssize_t nread) {
  int rc, frc;
  if (nread < 0) {
    conn_eof(c, q, (int)nread);
    return;
  }
  rc = cpx_tls_conn_feed(c->tls, p, (size_t)nread, tls_on_plain, tls_on_cipher,
                         c);
  if (rc == 3)
    return; /* the parser finished with the connection */
  frc = c->state == C_CLOSING ? 0 : conn_flush(c);
  if (rc == 2) {
    conn_done(c, frc == 0 && conn_reusable(c));
    return;
  }
  if (rc == 1) {
    conn_fail(c, CPX_EPARSE);
    return;
  }
  if (rc == CPX_ECLOSED) { /* close_notify: the TLS way to say EOF */
    conn_eof(c, q, UV_EOF);
    return;
  }
  if (rc == CPX_EIO) {
    tls_fail(c, q);
    return;
  }
  if (rc == 0)
    rc = frc;
  if (rc != 0) {
    conn_fail(c, rc);
    return;
  }
  if (c->state == C_HANDSHAKE && cpx_tls_conn_handshake_done(c->tls)) {
    rc = conn_start(c, q);
    if (rc != 0)
      conn_fail(c, rc);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  cpx_h1_conn_t *c = s->data;
  cpx_h1_req_t *q = c->req;

  if (nread == 0)
    return;
  if (!q) {
    /* Idle: the server closed it, or sent bytes nobody asked for. */
    conn_close(c);
    return;
  }
  if (c->tls) {
    tls_read(c, q, buf->base, nread);
    return;
  }
  if (nread < 0) {
    conn_eof(c, q, (int)nread);
    return;
  }
  if (conn_parse(c, q, buf->base, (size_t)nread) == P_MSG)
    conn_done(c, conn_reusable(c));
}

static void on_write(uv_write_t *w, int status) {
  conn_written(w->data, status);
}

/* The request through TLS. The pieces are joined first: one SSL_write per
 * piece would make a record each (five for the lane's head, length, body
 * and model pieces), each with its own header, tag and cipher call on both
 * sides; joined, a small request is one record. */
static int conn_tls_send(cpx_h1_conn_t *c, cpx_h1_req_t *q) {
  char *p = NULL;
  size_t len = 0, cap = 0;
  int rc = 0;
  if (q->nbufs == 1) {
    rc = cpx_tls_conn_write(c->tls, q->bufs[0].base, q->bufs[0].len,
                            tls_on_cipher, c);
  } else {
    for (unsigned i = 0; i < q->nbufs && rc == 0; i++)
      rc = cpx_buf_append(&p, &len, &cap, q->bufs[i].base, q->bufs[i].len);
    if (rc != 0) {
      free(p);
      return CPX_ENOMEM;
    }
    rc = cpx_tls_conn_write(c->tls, p, len, tls_on_cipher, c);
    free(p);
  }
  if (rc != 0)
    return rc == CPX_ENOMEM ? rc : CPX_EIO;
  return conn_flush(c);
}

/* Sends q's bytes on c (connected, handshake done) and waits for the
 * answer. Returns 0 or a negative code (then q is still attached; the
 * caller fails it). */
static int conn_start(cpx_h1_conn_t *c, cpx_h1_req_t *q) {
  int rc;
  c->state = C_BUSY;
  c->req = q;
  q->conn = c;
  c->cancelled = c->stopped = 0;
  c->msg_done = c->extra = 0;
  if (!c->reading) {
    rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0)
      return rc;
    c->reading = 1;
  }
  if (c->tls) {
    rc = conn_tls_send(c, q);
    if (rc != 0)
      return rc;
  } else {
    /* Write now what the socket takes (a completed uv_write costs an
     * epoll_ctl through libuv's drain); queue the rest. */
    uv_buf_t rest[sizeof(q->bufs) / sizeof(q->bufs[0])];
    unsigned n = 0, i = 0;
    int done = uv_try_write((uv_stream_t *)&c->tcp, q->bufs, q->nbufs);
    size_t d = done > 0 ? (size_t)done : 0;
    for (; i < q->nbufs && d >= q->bufs[i].len; i++)
      d -= q->bufs[i].len;
    for (; i < q->nbufs; i++, d = 0)
      rest[n++] =
          uv_buf_init(q->bufs[i].base + d, (unsigned)(q->bufs[i].len - d));
    if (n > 0) {
      c->write.data = c;
      rc = uv_write(&c->write, (uv_stream_t *)&c->tcp, rest, n, on_write);
      if (rc != 0)
        return rc;
      c->writing++;
    }
  }
  timer_arm(c, T_FIRST_BYTE, req_to(q)->first_byte_ms);
  return 0;
}

/* Connected to an https endpoint: the ClientHello goes out and the
 * handshake goes on in tls_read. */
static int conn_handshake(cpx_h1_conn_t *c) {
  cpx_tls_session_t *sess = session_take(c->ep);
  int rc = cpx_tls_client_conn_new(c->pool->tls, c->ep->host, sess,
                                   tls_on_session, c, &c->tls);
  if (sess)
    cpx_tls_session_free(sess); /* the connection holds its own reference */
  if (rc != 0)
    return rc;
  c->state = C_HANDSHAKE;
  rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc != 0)
    return rc;
  c->reading = 1;
  rc = cpx_tls_conn_feed(c->tls, NULL, 0, NULL, tls_on_cipher, c);
  if (rc != 0)
    return rc == CPX_ENOMEM ? rc : CPX_EIO;
  return conn_flush(c);
}

static void on_connect(uv_connect_t *cr, int status) {
  cpx_h1_conn_t *c = cr->data;
  if (status == UV_ECANCELED || c->state == C_CLOSING)
    return;
  if (status < 0) {
    cpx_h1_req_t *q = c->req;
    struct addrinfo *next = c->ai_cur ? c->ai_cur->ai_next : NULL;
    if (q && next) {
      /* The next address, on a new handle (a socket whose connect failed
       * cannot connect again); the address list goes with it. */
      struct addrinfo *head = c->ai_head;
      c->ai_head = NULL;
      req_detach(q);
      conn_close(c);
      status = conn_open_at(c->pool, c->ep, q, head, next);
      if (status == 0)
        return;
      q->cb->on_done(q, status);
      return;
    }
    conn_fail(c, status); /* never reused: no second try */
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (!c->req) {
    conn_close(c);
    return;
  }
  status = c->ep->tls ? conn_handshake(c) : conn_start(c, c->req);
  if (status != 0)
    conn_fail(c, status);
}

static int conn_connect(cpx_h1_conn_t *c, const struct sockaddr *sa) {
  c->state = C_CONNECTING;
  c->connect.data = c;
  return uv_tcp_connect(&c->connect, &c->tcp, sa, on_connect);
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  cpx_h1_conn_t *c = g->data;
  int closing = c->state == C_CLOSING;
  int rc = status;
  if (!closing && status == 0 && res) {
    c->ai_head = c->ai_cur = res; /* freed with the connection */
    res = NULL;
    rc = conn_connect(c, c->ai_cur->ai_addr);
  } else if (!closing && rc == 0) {
    rc = UV_EAI_NONAME;
  }
  if (res)
    uv_freeaddrinfo(res);
  /* The two handle references keep c alive unless it is closing. */
  conn_unref(c);
  if (!closing && rc != 0)
    conn_fail(c, rc);
}

/* Opens a connection to ep for q: to the address `at` of the list `head`
 * (owned from here on, even on failure) when given, else by name. */
static int conn_open_at(cpx_h1_pool_t *p, endpoint_t *ep, cpx_h1_req_t *q,
                        struct addrinfo *head, struct addrinfo *at) {
  cpx_h1_conn_t *c = calloc(1, sizeof(*c));
  union {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
  } addr;
  int rc;

  if (!c || !(c->rbuf = malloc(RBUF_SIZE))) {
    free(c);
    if (head)
      uv_freeaddrinfo(head);
    return CPX_ENOMEM;
  }
  c->ai_head = head;
  c->ai_cur = at;
  c->pool = p;
  c->ep = ep;
  c->req = q;
  q->conn = c;
  llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
  c->parser.data = c;
  uv_tcp_init(p->loop, &c->tcp);
  uv_timer_init(p->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->pending = 2;
  p->nconns++;
  q->pool = p;
  timer_arm(c, T_CONNECT, req_to(q)->connect_ms);
  if (at) {
    rc = conn_connect(c, at->ai_addr);
  } else if (uv_ip4_addr(ep->host, ep->port, &addr.v4) == 0 ||
             uv_ip6_addr(ep->host, ep->port, &addr.v6) == 0) {
    rc = conn_connect(c, (const struct sockaddr *)&addr);
  } else {
    char port[16];
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", ep->port);
    c->state = C_RESOLVING;
    c->gai.data = c;
    c->pending++;
    rc = uv_getaddrinfo(p->loop, &c->gai, on_resolved, ep->host, port, &hints);
    if (rc != 0)
      c->pending--;
  }
  if (rc != 0) {
    q->conn = NULL;
    c->req = NULL;
    conn_close(c);
    return rc;
  }
  return 0;
}

static int conn_open(cpx_h1_pool_t *p, endpoint_t *ep, cpx_h1_req_t *q) {
  return conn_open_at(p, ep, q, NULL, NULL);
}

/* ---- public ------------------------------------------------------------- */

void cpx_h1_pool_init(cpx_h1_pool_t *p, uv_loop_t *loop,
                      const cpx_h1_timeouts_t *to) {
  memset(p, 0, sizeof(*p));
  p->loop = loop;
  p->to = *to;
  uv_once(&settings_once, settings_init); /* workers start concurrently */
}

void cpx_h1_pool_set_timeouts(cpx_h1_pool_t *p, const cpx_h1_timeouts_t *to) {
  p->to = *to;
}

int cpx_h1_pool_set_ca(cpx_h1_pool_t *p, const char *ca_file, char *err,
                       size_t errlen) {
  cpx_tls_ctx_t *ctx;
  endpoint_t *e;
  int rc = cpx_tls_client_ctx_new(&ctx, ca_file, err, errlen);
  if (rc != 0)
    return rc;
  /* Connections made under the old trust hold their own reference to it
   * (OpenSSL counts them); the idle ones and the sessions go. */
  cpx_tls_ctx_free(p->tls);
  p->tls = ctx;
  for (e = p->endpoints; e; e = e->next) {
    if (!e->tls)
      continue;
    while (e->idle)
      conn_close(e->idle);
    sessions_clear(e);
  }
  return 0;
}

void cpx_h1_pool_close(cpx_h1_pool_t *p) {
  endpoint_t *e;
  if (p->closed)
    return;
  p->closed = 1;
  for (e = p->endpoints; e; e = e->next)
    while (e->idle)
      conn_close(e->idle);
  cpx_tls_ctx_free(p->tls); /* busy connections keep their own reference */
  p->tls = NULL;
  if (p->nconns == 0)
    endpoints_free(p);
}

int cpx_h1_send(cpx_h1_pool_t *p, cpx_h1_req_t *q) {
  endpoint_t *ep;
  cpx_h1_conn_t *c;

  if (p->closed)
    return CPX_ECLOSED;
  if (q->tls && !p->tls)
    return CPX_EINVAL; /* no trust configured: cpx_h1_pool_set_ca */
  req_start(p, q);
  ep = endpoint_get(p, q->host, q->port, q->tls);
  if (!ep)
    return CPX_ENOMEM;
  c = ep->idle;
  if (c) {
    ep->idle = c->next_idle;
    ep->nidle--;
    c->next_idle = NULL;
    uv_timer_stop(&c->timer);
    if (conn_start(c, q) == 0)
      return 0;
    /* The pooled connection is unusable: a fresh one instead (no callback
     * may run before this returns). */
    req_detach(q);
    conn_close(c);
  }
  return conn_open(p, ep, q);
}

int cpx__h1_send_addrs(cpx_h1_pool_t *p, cpx_h1_req_t *q,
                       struct addrinfo *list) {
  endpoint_t *ep;
  if (p->closed) {
    uv_freeaddrinfo(list);
    return CPX_ECLOSED;
  }
  if (q->tls && !p->tls) {
    uv_freeaddrinfo(list);
    return CPX_EINVAL;
  }
  req_start(p, q);
  ep = endpoint_get(p, q->host, q->port, q->tls);
  if (!ep) {
    uv_freeaddrinfo(list);
    return CPX_ENOMEM;
  }
  return conn_open_at(p, ep, q, list, list);
}

void cpx_h1_cancel(cpx_h1_req_t *q) {
  cpx_h1_conn_t *c = q->conn;
  if (!c)
    return;
  req_detach(q);
  c->cancelled = 1;
  conn_close(c);
}

void cpx_h1_pause(cpx_h1_req_t *q) {
  cpx_h1_conn_t *c = q->conn;
  if (!c || q->paused)
    return;
  q->paused = 1;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (c->timer_mode == T_IDLE || c->timer_mode == T_FIRST_BYTE)
    timer_arm(c, c->timer_mode, 0);
}

void cpx_h1_resume(cpx_h1_req_t *q) {
  cpx_h1_conn_t *c = q->conn;
  if (!q->paused)
    return;
  q->paused = 0;
  if (!c || c->state != C_BUSY)
    return;
  if (!c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
      conn_fail(c, CPX_EIO);
      return;
    }
    c->reading = 1;
  }
  timer_arm(c, T_IDLE, req_to(q)->idle_ms);
}

int cpx__h1_resumed(const cpx_h1_req_t *q) {
  return q->conn && q->conn->tls ? cpx_tls_conn_resumed(q->conn->tls) : 0;
}

const char *cpx_h1_header(const cpx_h1_req_t *q, const char *name, size_t *n) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < q->nfields; i++) {
    const cpx_h1_field_t *f = &q->fields[i];
    if (f->name_len == nl && memcmp(q->hbuf + f->name_off, name, nl) == 0) {
      if (n)
        *n = f->value_len;
      return q->hbuf + f->value_off;
    }
  }
  return NULL;
}

void cpx_h1_req_free(cpx_h1_req_t *q) {
  free(q->hbuf);
  q->hbuf = NULL;
  q->hlen = q->hcap = 0;
}
