/* cpx_h1.h: a small HTTP/1.1 client for http and https upstreams, with a
 * keep-alive connection pool per worker. The C fast path (cpx_lane.c) sends
 * its requests through it.
 *
 * Why not libcurl here: curl's per-transfer set-up (URL parse, request
 * build, connection-cache lookup, socket callbacks re-arming epoll) costs
 * more instructions than nginx spends on the whole proxy hop. A request
 * whose head is prebuilt, sent on a pooled connection and parsed with
 * llhttp needs none of it. The Lua pipeline's fetches (cpx_upstream.c)
 * come here too; what it cannot do (proxies, user:pass@ URLs, HEAD) stays
 * on libcurl.
 *
 * TLS (q->tls) is OpenSSL over memory BIOs (cpx_tls.c) on the loop: SNI,
 * the certificate checked against the pool's trust (cpx_h1_pool_set_ca)
 * and the host name, ALPN http/1.1, and the sessions the server handed out
 * kept per endpoint (TLS 1.3 tickets each used once), so a new connection
 * to a known server resumes without a certificate check.
 *
 * Ownership:
 *   - cpx_h1_pool_t lives in the worker; cpx_h1_pool_close closes every
 *     connection (their handles are freed in their close callbacks).
 *   - cpx_h1_req_t is the caller's (embedded in its own struct). The bytes
 *     in bufs are the caller's and must stay valid until on_done runs or
 *     cpx_h1_cancel returns. After either, the client never touches the
 *     request again.
 *   - Connections belong to the pool; a request borrows one and gives it
 *     back (kept alive) or closes it.
 */
#ifndef CPX_H1_H
#define CPX_H1_H

#include <llhttp.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_tls.h"

typedef struct cpx_h1_pool_s cpx_h1_pool_t;
typedef struct cpx_h1_req_s cpx_h1_req_t;
typedef struct cpx_h1_conn_s cpx_h1_conn_t;

#define CPX_H1_MAX_HEAD (64 * 1024) /* response head bytes */
#define CPX_H1_MAX_FIELDS 100
#define CPX_H1_MAX_IDLE 64    /* idle connections kept per endpoint */
#define CPX_H1_MAX_SESSIONS 8 /* TLS sessions kept per endpoint */

typedef struct {
  uint64_t connect_ms;    /* TCP connect (and name lookup, TLS handshake) */
  uint64_t first_byte_ms; /* request sent -> first response byte */
  uint64_t idle_ms;       /* between response reads (paused time excluded) */
  uint64_t keepalive_ms;  /* an idle pooled connection is closed after */
} cpx_h1_timeouts_t;

typedef struct {
  /* The response head. fields index into hbuf (names lower-cased). A
   * non-zero return stops the response: the connection is closed and
   * on_done(q, CPX_ECLOSED) follows once the parser has returned. */
  int (*on_head)(cpx_h1_req_t *q);
  /* A piece of the (de-chunked) body. Non-zero stops, as above. */
  int (*on_body)(cpx_h1_req_t *q, const char *p, size_t n);
  /* The end: 0 when the response is complete, else a negative code
   * (CPX_ETIMEOUT, CPX_EIO, CPX_EPARSE, CPX_ECLOSED after a stop, -errno);
   * q->got_bytes says whether any response byte had arrived. Runs from a
   * libuv callback, never inside the parser or inside cpx_h1_send. */
  void (*on_done)(cpx_h1_req_t *q, int rc);
} cpx_h1_cb_t;

typedef struct {
  size_t name_off, name_len;
  size_t value_off, value_len;
} cpx_h1_field_t;

struct cpx_h1_req_s {
  /* set by the caller before cpx_h1_send */
  const cpx_h1_cb_t *cb;
  void *data;
  const char *host; /* name or address literal; borrowed */
  int port;
  int tls;          /* https: the pool keys connections by (host, port, tls) */
  uv_buf_t bufs[6]; /* the request bytes, head first */
  unsigned nbufs;
  /* This request's connect, first-byte and idle timeouts (borrowed, valid
   * until on_done or cancel); NULL: the pool's. cpx.fetch takes them per
   * call. keepalive_ms is always the pool's. */
  const cpx_h1_timeouts_t *to;
  /* response head, valid from on_head until on_done / cancel */
  int status;
  char *hbuf; /* grown by the client; the caller frees it (cpx_h1_req_free) */
  size_t hlen, hcap;
  cpx_h1_field_t fields[CPX_H1_MAX_FIELDS];
  size_t nfields;
  int got_bytes;   /* a response byte arrived */
  const char *err; /* static text of the failure passed to on_done */
  /* internal */
  cpx_h1_pool_t *pool;
  cpx_h1_conn_t *conn;
  int retried;  /* already re-sent once on a fresh connection */
  int paused;   /* reading stopped by the caller (backpressure) */
  int in_field; /* header parsing: 1 in a name, 2 in a value */
  int head_done;
  char errbuf[192]; /* err's text when it is not static (TLS failures) */
};

struct cpx_h1_pool_s {
  uv_loop_t *loop;
  cpx_h1_timeouts_t to;
  void *endpoints;    /* idle lists per host:port (internal) */
  size_t nconns;      /* open connections, busy or idle */
  cpx_tls_ctx_t *tls; /* client trust and settings (owned); NULL: no https */
  int closed;
};

void cpx_h1_pool_init(cpx_h1_pool_t *p, uv_loop_t *loop,
                      const cpx_h1_timeouts_t *to);
/* New timeouts apply to requests sent from now on (reload). */
void cpx_h1_pool_set_timeouts(cpx_h1_pool_t *p, const cpx_h1_timeouts_t *to);
/* Sets the trust for https requests: the CA certificates in ca_file (PEM),
 * or the system store when ca_file is NULL or "". Reads the file now (call
 * it at start and reload, not per request). On success the idle https
 * connections and remembered sessions are dropped (they were checked
 * against the old trust); on failure nothing changes and err says why. */
int cpx_h1_pool_set_ca(cpx_h1_pool_t *p, const char *ca_file, char *err,
                       size_t errlen);
/* Closes every idle connection; busy ones close when their request ends. */
void cpx_h1_pool_close(cpx_h1_pool_t *p);

/* Sends q on an idle connection to host:port, or a new one. Returns 0 (the
 * outcome arrives through q->cb, never before this returns) or a negative
 * code (nothing was started, no callback will run). */
int cpx_h1_send(cpx_h1_pool_t *p, cpx_h1_req_t *q);
/* Tests: sends q on a new connection trying the addresses of list in
 * order (list as from getaddrinfo; owned from here on). */
int cpx__h1_send_addrs(cpx_h1_pool_t *p, cpx_h1_req_t *q,
                       struct addrinfo *list);
/* Stops q now: its connection is closed (a response cut short cannot be
 * reused); no callback runs afterwards. Safe inside q's callbacks. */
void cpx_h1_cancel(cpx_h1_req_t *q);
/* Backpressure: stop and restart reading the response. */
void cpx_h1_pause(cpx_h1_req_t *q);
void cpx_h1_resume(cpx_h1_req_t *q);
/* Frees what the client allocated for q (the head buffer). */
void cpx_h1_req_free(cpx_h1_req_t *q);
/* Tests: 1 when q's connection resumed a TLS session (valid in on_head). */
int cpx__h1_resumed(const cpx_h1_req_t *q);
/* Header lookup in the response (name lower case); NULL when absent. */
const char *cpx_h1_header(const cpx_h1_req_t *q, const char *name, size_t *n);

#endif /* CPX_H1_H */
