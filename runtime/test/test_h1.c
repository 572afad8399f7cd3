/* test_h1.c: the fast path's HTTP/1.1 client (cpx_h1) against a scripted
 * TCP server on the same loop: keep-alive reuse, the one retry after a
 * stale pooled connection, chunked and close-delimited bodies, 1xx heads,
 * timeouts, truncation, backpressure, cancel and stop; and the same server
 * behind TLS (cpx_tls.c's server side, with a CA and certificates made at
 * run time): trust, host names, a handshake cut short, session resumption
 * and reuse. Then cpx_upstream's fetches (the Lua path) carried by the
 * same pool: the request head they build, reuse, per-request timeouts, a
 * sink that refuses bytes (backpressure), a free mid-body, a server that
 * closes after the head, and a proxied fetch left to libcurl. */
#include "cpx_h1.h"
#include "cpx_test.h"
#include "cpx_tls.h"
#include "cpx_upstream.h"

#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* ---- the scripted server ----------------------------------------------------
 */

typedef struct {
  uv_tcp_t tcp;
  char rbuf[1 << 16]; /* what the socket gave */
  char buf[1 << 16];  /* request bytes (plaintext) */
  size_t len;
  int nreq; /* requests answered on this connection */
  int dead;
  cpx_tls_conn_t *tls; /* when the server speaks TLS */
  char *out;           /* ciphertext gathered for one write */
  size_t olen, ocap;
} sconn_t;

static struct {
  uv_tcp_t listener;
  int port;
  const char *answer; /* raw bytes sent for every request */
  size_t answer_len;
  int close_after_answer; /* close the connection after each answer */
  int drop_second;        /* close without answering a connection's 2nd */
  int silent;             /* never answer */
  int conns, requests;
  char last_req[1 << 16];
  size_t last_req_len;
  int eof_seen;           /* a connection was closed by the client */
  cpx_tls_ctx_t *tls;     /* serve TLS with this context */
  int close_in_handshake; /* TLS: close after the ClientHello */
} S;

static uv_loop_t *loop;

static void s_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  sconn_t *c = h->data;
  (void)sz;
  b->base = c->rbuf;
  b->len = sizeof(c->rbuf);
}

static void s_closed(uv_handle_t *h) {
  sconn_t *c = h->data;
  cpx_tls_conn_free(c->tls);
  free(c->out);
  free(c);
}

static void s_close(sconn_t *c) {
  if (c->dead)
    return;
  c->dead = 1;
  uv_close((uv_handle_t *)&c->tcp, s_closed);
}

typedef struct {
  uv_write_t w;
  sconn_t *c;
  char *data; /* owned, or NULL for a static answer */
  int answer;
} swrite_t;

static void s_written(uv_write_t *w, int st) {
  swrite_t *sw = w->data;
  sconn_t *c = sw->c;
  int answer = sw->answer;
  (void)st;
  free(sw->data);
  free(sw);
  if (answer && S.close_after_answer)
    s_close(c);
}

static void s_write(sconn_t *c, char *owned, const char *p, size_t n,
                    int answer) {
  swrite_t *sw = malloc(sizeof(*sw));
  uv_buf_t out = uv_buf_init((char *)p, (unsigned)n);
  sw->c = c;
  sw->data = owned;
  sw->answer = answer;
  sw->w.data = sw;
  uv_write(&sw->w, (uv_stream_t *)&c->tcp, &out, 1, s_written);
}

static int s_gather(void *ud, const char *p, size_t n) {
  sconn_t *c = ud;
  if (c->olen + n > c->ocap) {
    c->ocap = (c->olen + n) * 2;
    c->out = realloc(c->out, c->ocap);
  }
  memcpy(c->out + c->olen, p, n);
  c->olen += n;
  return 0;
}

/* Writes what TLS gathered in one write (an answer is never split, so a
 * close after it cannot cut it). */
static void s_flush(sconn_t *c, int answer) {
  if (c->olen == 0)
    return;
  s_write(c, c->out, c->out, c->olen, answer);
  c->out = NULL;
  c->olen = c->ocap = 0;
}

/* One request = head up to CRLFCRLF plus Content-Length bytes. */
static size_t s_complete(const char *p, size_t n) {
  const char *e = memmem(p, n, "\r\n\r\n", 4);
  const char *cl;
  size_t head, body = 0;
  if (!e)
    return 0;
  head = (size_t)(e - p) + 4;
  cl = memmem(p, head, "Content-Length: ", 16);
  if (cl)
    body = strtoul(cl + 16, NULL, 10);
  return n >= head + body ? head + body : 0;
}

/* Request bytes (plaintext): answers every complete request. Returns 1
 * when the connection was closed. */
static int s_input(sconn_t *c, const char *p, size_t n) {
  size_t used;
  if (c->len + n > sizeof(c->buf))
    n = sizeof(c->buf) - c->len;
  memcpy(c->buf + c->len, p, n);
  c->len += n;
  while ((used = s_complete(c->buf, c->len)) > 0) {
    memcpy(S.last_req, c->buf, used);
    S.last_req_len = used;
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    S.requests++;
    c->nreq++;
    if (S.silent)
      continue;
    if (S.drop_second && c->nreq == 2) {
      s_close(c);
      return 1;
    }
    if (c->tls) {
      cpx_tls_conn_write(c->tls, S.answer, S.answer_len, s_gather, c);
      s_flush(c, 1);
    } else {
      s_write(c, NULL, S.answer, S.answer_len, 1);
    }
  }
  return 0;
}

static int s_plain(void *ud, const char *p, size_t n) {
  return s_input(ud, p, n);
}

static void s_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  sconn_t *c = s->data;
  if (n < 0) {
    S.eof_seen++;
    s_close(c);
    return;
  }
  if (n == 0 || c->dead)
    return;
  if (!c->tls) {
    s_input(c, b->base, (size_t)n);
    return;
  }
  if (S.close_in_handshake) {
    s_close(c);
    return;
  }
  if (cpx_tls_conn_feed(c->tls, b->base, (size_t)n, s_plain, s_gather, c) < 0) {
    s_flush(c, 0);
    s_close(c);
    return;
  }
  if (!c->dead)
    s_flush(c, 0);
}

static void s_connection(uv_stream_t *l, int st) {
  sconn_t *c = calloc(1, sizeof(*c));
  (void)st;
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    s_close(c);
    return;
  }
  S.conns++;
  if (S.tls)
    cpx_tls_conn_new(S.tls, &c->tls);
  uv_read_start((uv_stream_t *)&c->tcp, s_alloc, s_read);
}

static void server_start(const char *answer) {
  struct sockaddr_in a;
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  cpx_tls_ctx_t *tls = S.tls; /* chosen by tls_server_start */
  memset(&S, 0, sizeof(S));
  S.tls = tls;
  S.answer = answer;
  S.answer_len = strlen(answer);
  uv_tcp_init(loop, &S.listener);
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&S.listener, (const struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&S.listener, 16, s_connection);
  uv_tcp_getsockname(&S.listener, (struct sockaddr *)&ss, &len);
  S.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void server_stop(void) {
  uv_close((uv_handle_t *)&S.listener, NULL);
}

/* ---- the client side -------------------------------------------------------
 */

typedef struct {
  cpx_h1_req_t q;
  int heads, dones, rc;
  int status;
  char ctype[64];
  char body[1 << 21];
  size_t body_len;
  int stop_in_head;   /* on_head returns 1 */
  int cancel_in_head; /* on_head calls cpx_h1_cancel */
  int pause_first;    /* pause at the first body piece */
  int pieces;
  int paused;       /* between pause and resume */
  int while_paused; /* body pieces delivered while paused */
  int resumed;      /* TLS: the connection resumed a session */
} call_t;

static cpx_h1_pool_t pool;
static int pending_calls;

static int c_head(cpx_h1_req_t *q) {
  call_t *c = q->data;
  size_t n;
  const char *ct = cpx_h1_header(q, "content-type", &n);
  c->heads++;
  c->status = q->status;
  c->resumed = cpx__h1_resumed(q);
  if (ct && n < sizeof(c->ctype)) {
    memcpy(c->ctype, ct, n);
    c->ctype[n] = 0;
  }
  if (c->cancel_in_head) {
    cpx_h1_cancel(q);
    pending_calls--;
    if (pending_calls == 0)
      uv_stop(loop);
    return 0;
  }
  return c->stop_in_head;
}

static void on_resume(uv_timer_t *t) {
  call_t *c = t->data;
  c->paused = 0;
  cpx_h1_resume(&c->q);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static int c_body(cpx_h1_req_t *q, const char *p, size_t n) {
  call_t *c = q->data;
  if (c->body_len + n > sizeof(c->body))
    return 1;
  if (c->paused)
    c->while_paused++;
  memcpy(c->body + c->body_len, p, n);
  c->body_len += n;
  if (c->pause_first && c->pieces++ == 0) {
    uv_timer_t *t = malloc(sizeof(*t));
    cpx_h1_pause(q);
    c->paused = 1;
    uv_timer_init(loop, t);
    t->data = c;
    uv_timer_start(t, on_resume, 50, 0);
  }
  return 0;
}

static void c_done(cpx_h1_req_t *q, int rc) {
  call_t *c = q->data;
  c->dones++;
  c->rc = rc;
  if (--pending_calls == 0)
    uv_stop(loop);
}

static const cpx_h1_cb_t cbs = {c_head, c_body, c_done};

static const char REQ[] = "POST /v1/x HTTP/1.1\r\nHost: t\r\nContent-Length: "
                          "2\r\n\r\n{}";

static call_t *call_new(void) {
  call_t *c = calloc(1, sizeof(*c));
  c->q.cb = &cbs;
  c->q.data = c;
  c->q.host = "127.0.0.1";
  c->q.port = S.port;
  c->q.bufs[0] = uv_buf_init((char *)REQ, sizeof(REQ) - 1);
  c->q.nbufs = 1;
  return c;
}

static void call_free(call_t *c) {
  cpx_h1_req_free(&c->q);
  free(c);
}

/* Sends one request and runs the loop until it ends. */
static call_t *roundtrip(call_t *c) {
  int rc;
  if (!c)
    c = call_new();
  pending_calls = 1;
  rc = cpx_h1_send(&pool, &c->q);
  CPX_CHECK_INT(rc, 0);
  if (rc == 0)
    uv_run(loop, UV_RUN_DEFAULT);
  return c;
}

static void stop_loop(uv_timer_t *t) {
  uv_stop(t->loop);
}

static void spin(int ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, stop_loop, (uint64_t)ms, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void pool_open(uint64_t first_byte_ms) {
  cpx_h1_timeouts_t to = {1000, first_byte_ms, 1000, 60000};
  cpx_h1_pool_init(&pool, loop, &to);
}

static void pool_shut(void) {
  cpx_h1_pool_close(&pool);
  server_stop();
  spin(20);
  CPX_CHECK_INT(pool.nconns, 0);
}

/* ---- cases ----------------------------------------------------------------
 */

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: 11\r\n\r\n{\"ok\":true}";

static void test_keepalive_reuse(void) {
  server_start(OK);
  pool_open(1000);
  for (int i = 0; i < 3; i++) {
    call_t *c = roundtrip(NULL);
    CPX_CHECK_INT(c->rc, 0);
    CPX_CHECK_INT(c->status, 200);
    CPX_CHECK_STR(c->ctype, "application/json");
    CPX_CHECK_MEM(c->body, c->body_len, "{\"ok\":true}", 11);
    call_free(c);
  }
  CPX_CHECK_INT(S.conns, 1);
  CPX_CHECK_INT(S.requests, 3);
  CPX_CHECK_MEM(S.last_req, S.last_req_len, REQ, sizeof(REQ) - 1);
  pool_shut();
}

static void test_chunked_after_100(void) {
  server_start("HTTP/1.1 100 Continue\r\n\r\n"
               "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  pool_open(1000);
  call_t *c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_INT(c->status, 201);
  CPX_CHECK_MEM(c->body, c->body_len, "hello world", 11);
  call_free(c);
  c = roundtrip(NULL); /* chunked framing leaves the connection reusable */
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(S.conns, 1);
  call_free(c);
  pool_shut();
}

static void test_stale_connection_retried_once(void) {
  server_start(OK);
  S.drop_second = 1; /* the pooled connection dies under the 2nd request */
  pool_open(1000);
  call_t *c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  call_free(c);
  c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->status, 200);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(S.conns, 2);
  CPX_CHECK_INT(S.requests, 3);
  call_free(c);
  pool_shut();
}

static void test_connection_refused(void) {
  call_t *c;
  server_start(OK);
  pool_open(1000);
  server_stop();
  spin(10);
  c = roundtrip(NULL);
  CPX_CHECK(c->rc < 0);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->heads, 0);
  CPX_CHECK(c->q.err && strstr(c->q.err, "refused") != NULL);
  call_free(c);
  cpx_h1_pool_close(&pool);
  spin(10);
  CPX_CHECK_INT(pool.nconns, 0);
}

static void test_first_byte_timeout(void) {
  server_start(OK);
  S.silent = 1;
  pool_open(100);
  call_t *c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, CPX_ETIMEOUT);
  CPX_CHECK(c->q.err && strcmp(c->q.err, "upstream first-byte timeout") == 0);
  call_free(c);
  spin(20);
  CPX_CHECK_INT(S.eof_seen, 1); /* the timed-out connection was closed */
  pool_shut();
}

static void test_close_delimited_body(void) {
  server_start("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
  S.close_after_answer = 1;
  pool_open(1000);
  call_t *c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_MEM(c->body, c->body_len, "until the end", 13);
  call_free(c);
  c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(S.conns, 2); /* never reused */
  call_free(c);
  pool_shut();
}

static void test_truncated_body(void) {
  server_start("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!");
  S.close_after_answer = 1;
  pool_open(1000);
  call_t *c = roundtrip(NULL);
  CPX_CHECK(c->rc < 0);
  CPX_CHECK_INT(c->q.got_bytes, 1);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_MEM(c->body, c->body_len, "half!", 5);
  call_free(c);
  pool_shut();
}

static void test_malformed_status(void) {
  server_start("HTTP/1.1 abc nope\r\n\r\n");
  pool_open(1000);
  call_t *c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, CPX_EPARSE);
  CPX_CHECK_INT(c->heads, 0);
  call_free(c);
  pool_shut();
}

static char big_answer[(3 << 20) + 128];

/* big_answer: a head and n body bytes a..z; *head is the head's length. */
static void big_body(size_t n, size_t *head) {
  size_t h =
      (size_t)snprintf(big_answer, sizeof(big_answer),
                       "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
  for (size_t i = 0; i < n; i++)
    big_answer[h + i] = (char)('a' + i % 26);
  big_answer[h + n] = 0;
  *head = h;
}

static void test_pause_resume(void) {
  size_t n = 1 << 20, h;
  big_body(n, &h);
  server_start(big_answer);
  pool_open(1000);
  call_t *c = call_new();
  c->pause_first = 1;
  roundtrip(c);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->while_paused, 0);
  CPX_CHECK(c->pieces > 1);
  CPX_CHECK_INT(c->body_len, n);
  CPX_CHECK(c->body_len == n && memcmp(c->body, big_answer + h, n) == 0);
  call_free(c);
  pool_shut();
}

static void test_cancel_in_head(void) {
  server_start(OK);
  pool_open(1000);
  call_t *c = call_new();
  c->cancel_in_head = 1;
  roundtrip(c);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_INT(c->dones, 0);
  call_free(c); /* the client must not touch it any more */
  spin(20);
  CPX_CHECK_INT(S.eof_seen, 1);
  pool_shut();
}

static void test_stop_in_head(void) {
  server_start(OK);
  pool_open(1000);
  call_t *c = call_new();
  c->stop_in_head = 1;
  roundtrip(c);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->rc, CPX_ECLOSED);
  call_free(c);
  c = roundtrip(NULL); /* a stopped response's connection is not reused */
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(S.conns, 2);
  call_free(c);
  pool_shut();
}

/* A name with several addresses ("localhost": ::1, then 127.0.0.1) where
 * the first one refuses: the next address is tried, as curl does. */
static void test_next_address_after_refusal(void) {
  struct addrinfo hints, *v6 = NULL, *v4 = NULL, *tail;
  char port[16];
  call_t *c;
  server_start(OK);
  pool_open(1000);
  snprintf(port, sizeof(port), "%d", S.port);
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  CPX_CHECK_INT(getaddrinfo("::1", port, &hints, &v6), 0);
  CPX_CHECK_INT(getaddrinfo("127.0.0.1", port, &hints, &v4), 0);
  /* one list, as a resolver would give it (glibc frees node by node) */
  for (tail = v6; tail->ai_next; tail = tail->ai_next)
    ;
  tail->ai_next = v4;
  c = call_new();
  pending_calls = 1;
  CPX_CHECK_INT(cpx__h1_send_addrs(&pool, &c->q, v6), 0);
  uv_run(loop, UV_RUN_DEFAULT);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->status, 200);
  CPX_CHECK_INT(S.conns, 1);
  call_free(c);
  pool_shut();
}

/* ---- TLS ----------------------------------------------------------------- */

static char tmpdir[64], ca_pem[128], other_ca_pem[128], leaf_pem[128],
    leaf_key[128];

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX v;
  X509_EXTENSION *e;
  X509V3_set_ctx_nodb(&v);
  X509V3_set_ctx(&v, issuer, x, NULL, NULL, 0);
  e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
  X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
}

/* A certificate for key, signed by (issuer, ikey) or by itself. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer,
                       EVP_PKEY *ikey, const char *san) {
  static long serial = 1;
  X509 *x = X509_new();
  X509_NAME *n = X509_get_subject_name(x);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn,
                             -1, -1, 0);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
  if (san) {
    add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
    add_ext(x, issuer, NID_subject_alt_name, san);
  } else {
    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
  }
  X509_sign(x, ikey ? ikey : key, EVP_sha256());
  return x;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k) {
  FILE *f = fopen(path, "wb");
  if (x)
    PEM_write_X509(f, x);
  if (k)
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  fclose(f);
}

/* A CA, a server certificate from it for localhost and 127.0.0.1, and a
 * second CA that signed nothing we serve. */
static void certs_make(void) {
  EVP_PKEY *cak = EVP_EC_gen("P-256"), *ok = EVP_EC_gen("P-256"),
           *lk = EVP_EC_gen("P-256");
  X509 *ca = make_cert(cak, "test CA", NULL, NULL, NULL);
  X509 *other = make_cert(ok, "other CA", NULL, NULL, NULL);
  X509 *leaf =
      make_cert(lk, "localhost", ca, cak, "DNS:localhost,IP:127.0.0.1");
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/cpx-test-h1-XXXXXX");
  CPX_CHECK(mkdtemp(tmpdir) != NULL);
  snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", tmpdir);
  snprintf(other_ca_pem, sizeof(other_ca_pem), "%s/other-ca.pem", tmpdir);
  snprintf(leaf_pem, sizeof(leaf_pem), "%s/leaf.pem", tmpdir);
  snprintf(leaf_key, sizeof(leaf_key), "%s/leaf-key.pem", tmpdir);
  write_pem(ca_pem, ca, NULL);
  write_pem(other_ca_pem, other, NULL);
  write_pem(leaf_pem, leaf, NULL);
  write_pem(leaf_key, NULL, lk);
  X509_free(ca);
  X509_free(other);
  X509_free(leaf);
  EVP_PKEY_free(cak);
  EVP_PKEY_free(ok);
  EVP_PKEY_free(lk);
}

static void certs_remove(void) {
  unlink(ca_pem);
  unlink(other_ca_pem);
  unlink(leaf_pem);
  unlink(leaf_key);
  rmdir(tmpdir);
}

static void tls_server_start(const char *answer) {
  char err[512];
  CPX_CHECK_INT(cpx_tls_ctx_new(&S.tls, leaf_pem, leaf_key, err, sizeof(err)),
                0);
  server_start(answer);
}

/* The pool trusting ca_file (NULL: the test CA). */
static void tls_pool_open(const char *ca_file) {
  char err[512];
  pool_open(1000);
  CPX_CHECK_INT(
      cpx_h1_pool_set_ca(&pool, ca_file ? ca_file : ca_pem, err, sizeof(err)),
      0);
}

static void tls_shut(void) {
  pool_shut();
  cpx_tls_ctx_free(S.tls);
  S.tls = NULL;
}

static call_t *tls_call(const char *host) {
  call_t *c = call_new();
  c->q.host = host;
  c->q.tls = 1;
  return c;
}

static void test_tls_keepalive_reuse(void) {
  tls_server_start(OK);
  tls_pool_open(NULL);
  for (int i = 0; i < 3; i++) {
    call_t *c = roundtrip(tls_call("localhost"));
    CPX_CHECK_INT(c->rc, 0);
    CPX_CHECK_INT(c->status, 200);
    CPX_CHECK_MEM(c->body, c->body_len, "{\"ok\":true}", 11);
    call_free(c);
  }
  CPX_CHECK_INT(S.conns, 1); /* one handshake for three requests */
  CPX_CHECK_INT(S.requests, 3);
  CPX_CHECK_MEM(S.last_req, S.last_req_len, REQ, sizeof(REQ) - 1);
  tls_shut();
}

/* The server closes after each answer: every request needs a connection,
 * and every one after the first resumes the session the server gave. */
static void test_tls_session_resumed(void) {
  tls_server_start(OK);
  S.close_after_answer = 1;
  tls_pool_open(NULL);
  for (int i = 0; i < 3; i++) {
    call_t *c = roundtrip(tls_call("127.0.0.1"));
    CPX_CHECK_INT(c->rc, 0);
    CPX_CHECK_INT(c->status, 200);
    CPX_CHECK_INT(c->resumed, i > 0);
    call_free(c);
    spin(10); /* the close reaches the idle connection */
  }
  CPX_CHECK_INT(S.conns, 3);
  tls_shut();
}

static void test_tls_stale_connection_retried_once(void) {
  tls_server_start(OK);
  S.drop_second = 1;
  tls_pool_open(NULL);
  call_t *c = roundtrip(tls_call("localhost"));
  CPX_CHECK_INT(c->rc, 0);
  call_free(c);
  c = roundtrip(tls_call("localhost"));
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->status, 200);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->resumed, 1);
  CPX_CHECK_INT(S.conns, 2);
  CPX_CHECK_INT(S.requests, 3);
  call_free(c);
  tls_shut();
}

/* A chain from a CA the pool does not trust. */
static void test_tls_untrusted_certificate(void) {
  tls_server_start(OK);
  tls_pool_open(other_ca_pem);
  call_t *c = roundtrip(tls_call("localhost"));
  CPX_CHECK_INT(c->rc, CPX_EIO);
  CPX_CHECK_INT(c->heads, 0);
  CPX_CHECK(c->q.err && strstr(c->q.err, "upstream TLS handshake failed: "
                                         "certificate verify failed") != NULL);
  CPX_CHECK_INT(S.requests, 0); /* nothing was sent */
  call_free(c);
  c = roundtrip(tls_call("localhost")); /* still refused: nothing cached */
  CPX_CHECK_INT(c->rc, CPX_EIO);
  call_free(c);
  tls_shut();
}

/* The right CA, but the certificate names another host. */
static void test_tls_wrong_host_name(void) {
  struct addrinfo hints, *v4 = NULL;
  char port[16];
  call_t *c;
  tls_server_start(OK);
  tls_pool_open(NULL);
  snprintf(port, sizeof(port), "%d", S.port);
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  CPX_CHECK_INT(getaddrinfo("127.0.0.1", port, &hints, &v4), 0);
  c = tls_call("wrong.example");
  pending_calls = 1;
  CPX_CHECK_INT(cpx__h1_send_addrs(&pool, &c->q, v4), 0);
  uv_run(loop, UV_RUN_DEFAULT);
  CPX_CHECK_INT(c->rc, CPX_EIO);
  CPX_CHECK(c->q.err && strstr(c->q.err, "hostname mismatch") != NULL);
  CPX_CHECK_INT(S.requests, 0);
  call_free(c);
  tls_shut();
}

static void test_tls_closed_mid_handshake(void) {
  tls_server_start(OK);
  S.close_in_handshake = 1;
  tls_pool_open(NULL);
  call_t *c = roundtrip(tls_call("localhost"));
  CPX_CHECK(c->rc < 0);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->heads, 0);
  CPX_CHECK(c->q.err && strstr(c->q.err, "TLS handshake") != NULL);
  call_free(c);
  tls_shut();
}

/* A server that accepts and never answers the ClientHello: the connect
 * timeout covers the handshake. And the pool keeps http and https apart. */
static void test_tls_handshake_timeout(void) {
  cpx_h1_timeouts_t to = {100, 1000, 1000, 60000};
  char err[512];
  server_start(OK); /* plain: a ClientHello is never a complete request */
  cpx_h1_pool_init(&pool, loop, &to);
  CPX_CHECK_INT(cpx_h1_pool_set_ca(&pool, ca_pem, err, sizeof(err)), 0);
  call_t *c = roundtrip(tls_call("localhost"));
  CPX_CHECK_INT(c->rc, CPX_ETIMEOUT);
  CPX_CHECK(c->q.err && strcmp(c->q.err, "upstream connect timeout") == 0);
  CPX_CHECK_INT(S.requests, 0);
  call_free(c);
  /* The pool keys by (host, port, tls): a plain connection idle at the
   * same address is not an https one. */
  c = roundtrip(NULL);
  CPX_CHECK_INT(c->rc, 0);
  call_free(c);
  c = roundtrip(tls_call("127.0.0.1"));
  CPX_CHECK_INT(c->rc, CPX_ETIMEOUT);
  call_free(c);
  CPX_CHECK_INT(S.conns, 3);
  CPX_CHECK_INT(S.requests, 1);
  pool_shut();
}

/* A chunked body and a large one through TLS records. */
static void test_tls_chunked_and_large(void) {
  size_t n = 1 << 20, h;
  tls_server_start("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  tls_pool_open(NULL);
  call_t *c = roundtrip(tls_call("localhost"));
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_MEM(c->body, c->body_len, "hello world", 11);
  call_free(c);
  big_body(n, &h);
  S.answer = big_answer;
  S.answer_len = h + n;
  c = tls_call("localhost");
  c->pause_first = 1;
  roundtrip(c);
  CPX_CHECK_INT(c->rc, 0);
  CPX_CHECK_INT(c->body_len, n);
  CPX_CHECK(c->body_len == n && memcmp(c->body, big_answer + h, n) == 0);
  call_free(c);
  CPX_CHECK_INT(S.conns, 1);
  tls_shut();
}

static void test_tls_ca_file_errors(void) {
  char err[512], bad[160];
  FILE *f;
  pool_open(1000);
  CPX_CHECK(cpx_h1_pool_set_ca(&pool, "/nonexistent/ca.pem", err, sizeof(err)) <
            0);
  CPX_CHECK(strstr(err, "/nonexistent/ca.pem") != NULL);
  snprintf(bad, sizeof(bad), "%s/not-pem.pem", tmpdir);
  f = fopen(bad, "wb");
  fputs("not a certificate\n", f);
  fclose(f);
  CPX_CHECK(cpx_h1_pool_set_ca(&pool, bad, err, sizeof(err)) < 0);
  CPX_CHECK(strstr(err, bad) != NULL);
  unlink(bad);
  /* https without any trust set is refused up front */
  {
    call_t *c = tls_call("localhost");
    CPX_CHECK_INT(cpx_h1_send(&pool, &c->q), CPX_EINVAL);
    call_free(c);
  }
  /* the system store loads */
  CPX_CHECK_INT(cpx_h1_pool_set_ca(&pool, NULL, err, sizeof(err)), 0);
  cpx_h1_pool_close(&pool);
}

/* ---- cpx_fetch on the h1 pool ------------------------------------------- */

typedef struct {
  cpx_fetch_t *f;
  int heads, dones;
  int sink;           /* take the body through a sink, not buffered */
  int refuse_first;   /* the sink refuses its first piece (EAGAIN) */
  int refusing;       /* between that refusal and cpx_fetch_resume */
  int while_refusing; /* sink calls while refusing */
  int free_at_first;  /* free the fetch after the first piece */
  int pieces;
  char got[3 << 20];
  size_t got_len;
} fcall_t;

static cpx_upstream_t up;

static void f_resume(uv_timer_t *t) {
  fcall_t *c = t->data;
  c->refusing = 0;
  cpx_fetch_resume(c->f);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void f_free(uv_timer_t *t) {
  fcall_t *c = t->data;
  cpx_fetch_free(c->f);
  c->f = NULL;
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  uv_stop(loop);
}

static void f_later(fcall_t *c, uv_timer_cb cb, uint64_t ms) {
  uv_timer_t *t = malloc(sizeof(*t));
  uv_timer_init(loop, t);
  t->data = c;
  uv_timer_start(t, cb, ms, 0);
}

static int f_sink(cpx_fetch_t *f, const char *p, size_t n) {
  fcall_t *c = f->data;
  if (c->refusing)
    c->while_refusing++;
  if (c->refuse_first && c->pieces == 0 && !c->refusing) {
    c->refusing = 1;
    c->refuse_first = 0;
    f_later(c, f_resume, 30);
    return CPX_EAGAIN;
  }
  if (c->got_len + n > sizeof(c->got))
    return CPX_ELIMIT;
  if (c->free_at_first && c->pieces == 1) {
    /* a slow client that then goes away: refused, freed while paused */
    f_later(c, f_free, 0);
    return CPX_EAGAIN;
  }
  memcpy(c->got + c->got_len, p, n);
  c->got_len += n;
  c->pieces++;
  return 0;
}

static void f_event(cpx_fetch_t *f, int ev) {
  fcall_t *c = f->data;
  if (ev == CPX_FETCH_HEADERS) {
    c->heads++;
    if (c->sink)
      cpx_fetch_sink(f, f_sink);
  } else if (ev == CPX_FETCH_DONE) {
    c->dones++;
    uv_stop(loop);
  }
}

static void up_open(uint64_t first_byte_ms) {
  pool_open(first_byte_ms);
  CPX_CHECK_INT(cpx_upstream_init(&up, loop, NULL), 0);
  up.env_proxy = 0; /* whatever this shell exports */
  cpx_upstream_use_h1(&up, &pool);
}

static void up_shut(void) {
  cpx_upstream_close(&up);
  pool_shut();
}

static char url[128];

/* Options for a GET of path on the scripted server. */
static void opts_for(cpx_fetch_opts_t *o, const char *path) {
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", S.port, path);
  memset(o, 0, sizeof(*o));
  o->url = url;
}

/* Starts a fetch of url and runs the loop until it is done (or freed). */
static fcall_t *fetch_run(fcall_t *c, const cpx_fetch_opts_t *o) {
  int rc;
  if (!c)
    c = calloc(1, sizeof(*c));
  rc = cpx_fetch_start(&up, o, f_event, c, &c->f);
  CPX_CHECK_INT(rc, 0);
  if (rc != 0)
    return c;
  if (!c->sink)
    cpx_fetch_buffer(c->f);
  uv_run(loop, UV_RUN_DEFAULT);
  return c;
}

static void fcall_free(fcall_t *c) {
  if (c->f)
    cpx_fetch_free(c->f);
  free(c);
  spin(5);
}

static void test_fetch_head_and_reuse(void) {
  char want[512];
  cpx_header_t h[] = {
      {{"X-Key", 5}, {"k1", 2}},
      {{"content-length", 14}, {"999", 3}}, /* ours wins */
      {{"Content-Type", 12}, {"application/json", 16}},
  };
  cpx_fetch_opts_t o;
  server_start(OK);
  up_open(1000);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/x?a=1", S.port);
  memset(&o, 0, sizeof(o));
  o.url = url;
  o.headers = h;
  o.nheaders = 3;
  o.body = "{}";
  o.body_len = 2;
  for (int i = 0; i < 2; i++) {
    fcall_t *c = fetch_run(NULL, &o);
    CPX_CHECK_INT(c->f->h1 != NULL, 1);
    CPX_CHECK_INT(c->f->result, 0);
    CPX_CHECK_INT(c->f->status, 200);
    CPX_CHECK_INT(c->heads, 1);
    CPX_CHECK_MEM(c->f->body, c->f->body_len, "{\"ok\":true}", 11);
    CPX_CHECK(c->f->resp_headers &&
              strstr(c->f->resp_headers,
                     "content-type: application/json\r\n") != NULL);
    fcall_free(c);
  }
  snprintf(want, sizeof(want),
           "POST /v1/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Key: k1\r\n"
           "Content-Type: application/json\r\nAccept: */*\r\n"
           "Content-Length: 2\r\n\r\n{}",
           S.port);
  CPX_CHECK_MEM(S.last_req, S.last_req_len, want, strlen(want));
  CPX_CHECK_INT(S.conns, 1); /* the second fetch reused the connection */
  CPX_CHECK_INT(S.requests, 2);
  up_shut();
}

/* A header that would split the request is refused before anything is
 * sent; a GET has no body headers. */
static void test_fetch_refuses_line_breaks(void) {
  cpx_header_t bad[] = {{{"X-A", 3}, {"v\r\nX-Evil: 1", 12}}};
  cpx_fetch_opts_t o;
  cpx_fetch_t *f = NULL;
  fcall_t *c;
  char want[256];
  server_start(OK);
  up_open(1000);
  snprintf(url, sizeof(url), "http://localhost:%d/get", S.port);
  memset(&o, 0, sizeof(o));
  o.url = url;
  o.headers = bad;
  o.nheaders = 1;
  CPX_CHECK_INT(cpx_fetch_start(&up, &o, f_event, NULL, &f), CPX_EINVAL);
  o.headers = NULL;
  o.nheaders = 0;
  c = fetch_run(NULL, &o);
  CPX_CHECK_INT(c->f->result, 0);
  snprintf(want, sizeof(want),
           "GET /get HTTP/1.1\r\nHost: localhost:%d\r\nAccept: */*\r\n\r\n",
           S.port);
  CPX_CHECK_MEM(S.last_req, S.last_req_len, want, strlen(want));
  CPX_CHECK_INT(S.requests, 1);
  fcall_free(c);
  up_shut();
}

/* The fetch's own first-byte timeout, not the pool's (1 s). */
static void test_fetch_own_timeout(void) {
  cpx_fetch_opts_t o;
  server_start(OK);
  S.silent = 1;
  up_open(1000);
  opts_for(&o, "/slow");
  o.first_byte_timeout_ms = 50;
  fcall_t *c = fetch_run(NULL, &o);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->f->result, CPX_ETIMEOUT);
  CPX_CHECK_STR(c->f->errmsg, "upstream first-byte timeout");
  fcall_free(c);
  up_shut();
}

/* A sink that refuses a piece (a slow client): reading stops, the refused
 * bytes come again after cpx_fetch_resume, nothing arrives in between, and
 * every byte arrives once, in order, before the end is reported. */
static void test_fetch_sink_backpressure(void) {
  size_t n = 3 << 20, h; /* past what is held before the sink is set */
  cpx_fetch_opts_t o;
  big_body(n, &h);
  server_start(big_answer);
  up_open(1000);
  opts_for(&o, "/stream");
  fcall_t *c = calloc(1, sizeof(*c));
  c->sink = 1;
  c->refuse_first = 1;
  fetch_run(c, &o);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->f->result, 0);
  CPX_CHECK_INT(c->while_refusing, 0);
  CPX_CHECK(c->pieces > 1);
  CPX_CHECK_INT(c->got_len, n);
  CPX_CHECK(c->got_len == n && memcmp(c->got, big_answer + h, n) == 0);
  fcall_free(c);
  CPX_CHECK_INT(S.conns, 1);
  up_shut();
}

/* The owner frees the fetch mid-body, while its sink has refused bytes
 * (a slow client that went away): no event after, the connection is
 * closed (a cut response cannot be reused). */
static void test_fetch_freed_mid_body(void) {
  size_t n = 3 << 20, h;
  cpx_fetch_opts_t o;
  big_body(n, &h);
  server_start(big_answer);
  up_open(1000);
  opts_for(&o, "/stream");
  fcall_t *c = calloc(1, sizeof(*c));
  c->sink = 1;
  c->free_at_first = 1;
  fetch_run(c, &o);
  CPX_CHECK(c->f == NULL);
  CPX_CHECK_INT(c->dones, 0);
  CPX_CHECK(c->got_len < n);
  spin(20);
  CPX_CHECK_INT(S.eof_seen, 1);
  CPX_CHECK_INT(pool.nconns, 0);
  fcall_free(c);
  up_shut();
}

/* The server sends a head promising 100 bytes, then closes. */
static void test_fetch_closed_after_head(void) {
  cpx_fetch_opts_t o;
  server_start("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
  S.close_after_answer = 1;
  up_open(1000);
  opts_for(&o, "/cut");
  fcall_t *c = fetch_run(NULL, &o);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->f->status, 200);
  CPX_CHECK_INT(c->f->result, CPX_EIO);
  CPX_CHECK_STR(c->f->errmsg, "upstream closed the connection");
  fcall_free(c);
  up_shut();
}

/* A body that stops coming: the fetch's own idle timeout (the pool's is
 * 1 s), with the libcurl client's text. */
static void test_fetch_idle_timeout(void) {
  cpx_fetch_opts_t o;
  server_start("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
  up_open(1000);
  opts_for(&o, "/quiet");
  o.idle_timeout_ms = 50;
  fcall_t *c = fetch_run(NULL, &o);
  CPX_CHECK_INT(c->heads, 1);
  CPX_CHECK_INT(c->dones, 1);
  CPX_CHECK_INT(c->f->result, CPX_ETIMEOUT);
  CPX_CHECK_STR(c->f->errmsg, "upstream stream idle timeout");
  fcall_free(c);
  spin(20);
  CPX_CHECK_INT(S.eof_seen, 1); /* the cut connection was closed */
  up_shut();
}

/* A proxy is libcurl's: the scripted server, as the proxy, sees the
 * absolute-form request line curl sends to a proxy. */
static void test_fetch_proxy_goes_to_curl(void) {
  char proxy[64];
  cpx_fetch_opts_t o;
  static const char line[] = "GET http://upstream.invalid/p HTTP/1.1\r\n";
  server_start(OK);
  up_open(1000);
  snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", S.port);
  memset(&o, 0, sizeof(o));
  o.url = "http://upstream.invalid/p";
  o.proxy = proxy;
  fcall_t *c = fetch_run(NULL, &o);
  CPX_CHECK(c->f->h1 == NULL);
  CPX_CHECK_INT(c->f->result, 0);
  CPX_CHECK_INT(c->f->status, 200);
  CPX_CHECK(S.last_req_len > sizeof(line) - 1 &&
            memcmp(S.last_req, line, sizeof(line) - 1) == 0);
  fcall_free(c);
  up_shut();
}

int main(void) {
  loop = uv_default_loop();
  CPX_TEST_RUN(test_keepalive_reuse);
  CPX_TEST_RUN(test_chunked_after_100);
  CPX_TEST_RUN(test_stale_connection_retried_once);
  CPX_TEST_RUN(test_connection_refused);
  CPX_TEST_RUN(test_first_byte_timeout);
  CPX_TEST_RUN(test_close_delimited_body);
  CPX_TEST_RUN(test_truncated_body);
  CPX_TEST_RUN(test_malformed_status);
  CPX_TEST_RUN(test_pause_resume);
  CPX_TEST_RUN(test_cancel_in_head);
  CPX_TEST_RUN(test_stop_in_head);
  CPX_TEST_RUN(test_next_address_after_refusal);
  CPX_TEST_RUN(test_fetch_head_and_reuse);
  CPX_TEST_RUN(test_fetch_refuses_line_breaks);
  CPX_TEST_RUN(test_fetch_own_timeout);
  CPX_TEST_RUN(test_fetch_sink_backpressure);
  CPX_TEST_RUN(test_fetch_freed_mid_body);
  CPX_TEST_RUN(test_fetch_closed_after_head);
  CPX_TEST_RUN(test_fetch_idle_timeout);
  CPX_TEST_RUN(test_fetch_proxy_goes_to_curl);
  certs_make();
  CPX_TEST_RUN(test_tls_keepalive_reuse);
  CPX_TEST_RUN(test_tls_session_resumed);
  CPX_TEST_RUN(test_tls_stale_connection_retried_once);
  CPX_TEST_RUN(test_tls_untrusted_certificate);
  CPX_TEST_RUN(test_tls_wrong_host_name);
  CPX_TEST_RUN(test_tls_closed_mid_handshake);
  CPX_TEST_RUN(test_tls_handshake_timeout);
  CPX_TEST_RUN(test_tls_chunked_and_large);
  CPX_TEST_RUN(test_tls_ca_file_errors);
  certs_remove();
  uv_run(loop, UV_RUN_NOWAIT);
  CPX_TEST_DONE();
}
