/* cpx_server.h: the libuv HTTP/1.1 server: listener, connections,
 * keep-alive, limits, timeouts, response writing with backpressure, drain.
 *
 * Ownership:
 *   - cpx_server_t is owned by the worker; cpx_server_close starts closing
 *     its handles and the worker frees it after the loop has run them out.
 *   - cpx_conn_t is owned by the server; it is freed in the close callbacks
 *     of its two handles (tcp and timer).
 *   - cpx_request_t is reference counted: the connection holds one reference
 *     while the request is its active one, the handler (the Lua layer) takes
 *     one with cpx_request_ref. When the client goes away first, r->conn
 *     becomes NULL and writes fail with CPX_ECLOSED.
 */
#ifndef CPX_SERVER_H
#define CPX_SERVER_H

#include <uv.h>

#include "cpx.h"
#include "cpx_access_log.h"
#include "cpx_http.h"
#include "cpx_tls.h"

typedef struct cpx_server_s cpx_server_t;
typedef struct cpx_conn_s cpx_conn_t;
typedef struct cpx_request_s cpx_request_t;

typedef struct {
  char host[256];
  int port;
  cpx_http_limits_t http;
  uint64_t header_timeout_ms;    /* whole header: 10 s -> 408 */
  uint64_t body_timeout_ms;      /* between body reads: 60 s -> 408 */
  uint64_t keepalive_timeout_ms; /* idle keep-alive: 60 s */
  uint64_t write_stall_ms;       /* no write progress: 300 s -> close */
  uint64_t drain_timeout_ms;     /* SIGTERM drain: 30 s */
  size_t write_high_water;       /* pause producers above (256 KiB) */
  size_t write_low_water;        /* resume producers below (64 KiB) */
  /* Lingering close (as nginx's lingering_*): after an answer that closes
   * the connection, input is read and discarded, never buffered, for at
   * most lingering_time_ms in all, lingering_timeout_ms between reads and
   * lingering_max_bytes, so that the client reads the answer instead of a
   * reset caused by its unread bytes. */
  uint64_t lingering_time_ms;    /* 30 s */
  uint64_t lingering_timeout_ms; /* 5 s */
  size_t lingering_max_bytes;    /* 64 MiB */
  /* Open connections per worker (per cpx_server_t) beyond which a new one
   * is answered 503 and closed; lingering ones count. 0 = no limit. */
  size_t max_connections; /* 10000 */
  /* Open connections per worker from one client address (IPv4, or IPv6
   * by its /64, which one host usually owns whole); one more is answered
   * 503 and closed like max_connections. 0 = no limit (the default). */
  size_t max_connections_per_ip; /* 0 */
  int reuse_port;
} cpx_server_config_t;

void cpx_server_config_defaults(cpx_server_config_t *cfg);

typedef struct {
  cpx_str_t name;
  cpx_str_t value;
} cpx_header_t;

struct cpx_request_s {
  cpx_server_t *srv;
  cpx_conn_t *conn;        /* NULL once the client is gone */
  cpx_http_request_t http; /* owned */
  char rid[9];             /* 8 hex chars */
  char remote[64];
  uint64_t start_ns;
  int refs;
  /* response state */
  int status;
  int headers_sent;
  int streaming; /* started with cpx_request_start */
  int chunked;   /* streaming with chunked encoding */
  int finished;
  int aborted;     /* client gone before finish */
  int close_after; /* send Connection: close */
  uint64_t bytes_out;
  const char *tag; /* static string for the access log ("fast"), or NULL */
  cpx_access_line_t
      *access; /* its claimed access line (cpx_access_log.c), or NULL */
  /* Set by the handler (the Lua layer); called from the loop. */
  void *handler_data;
  void (*on_abort)(cpx_request_t *r);    /* client disconnected */
  void (*on_drain)(cpx_request_t *r);    /* write queue fell below low water */
  void (*on_shutdown)(cpx_request_t *r); /* drain deadline reached */
  void (*on_free)(cpx_request_t *r);     /* last reference dropped */
};

/* Called for each complete request. The handler must eventually finish the
 * response (or the client goes away). */
typedef void (*cpx_request_cb)(cpx_server_t *srv, cpx_request_t *r);
typedef void (*cpx_server_drained_cb)(cpx_server_t *srv);

struct cpx_server_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_timer_t drain_timer;
  cpx_server_config_t cfg;
  cpx_tls_ctx_t *tls; /* owned; NULL without TLS */
  cpx_request_cb on_request;
  cpx_server_drained_cb on_drained;
  void *data;
  cpx_conn_t *conns; /* intrusive list of open connections */
  size_t nconns;
  /* limits.max-connections refusals: logged at most once a second, with
   * the count since the last line, so a flood cannot flood the log. */
  uint64_t over_logged_ns;
  unsigned long over_unlogged;
  /* Open connections by client address, for max_connections_per_ip: a
   * chained hash of entries owned here, one per address with a connection
   * open (freed when its count drops to 0), so its size is bounded by
   * nconns. Allocated on first use; freed by cpx_server_close. */
  struct cpx_ip_count_s **ip_buckets;
  cpx_access_log_t access; /* lines waiting for their record */
  /* Connections holding a streamed answer's head (cpx_request_start) and
   * the prepare handle that flushes them before the loop waits. */
  cpx_conn_t *held;
  int held_turns; /* loop turns the heads were kept without waiting */
  uv_prepare_t flush;
  int flush_open;
  size_t active_requests;
  int listener_open; /* listener handle initialised (needs uv_close) */
  int listening;
  int draining;
  int closed;
};

int cpx_server_init(cpx_server_t *srv, uv_loop_t *loop,
                    const cpx_server_config_t *cfg, cpx_tls_ctx_t *tls);
int cpx_server_listen(cpx_server_t *srv, char *err, size_t errlen);
/* Applies new limits and timeouts to new connections (reload). */
void cpx_server_update_config(cpx_server_t *srv,
                              const cpx_server_config_t *cfg);
/* Stops accepting, closes idle connections, lets active requests finish;
 * at the deadline calls on_shutdown for each remaining request and closes
 * its connection. on_drained runs once no request is left. */
void cpx_server_drain(cpx_server_t *srv);
/* Closes every handle now. */
void cpx_server_close(cpx_server_t *srv);

void cpx_request_ref(cpx_request_t *r);
void cpx_request_unref(cpx_request_t *r);

/* CORS as CLIProxyAPI sends it, for header arrays built in C. These lists
 * are the only ones: Lua reads them as cpx.http.cors_headers and
 * cpx.http.sse_headers (cpx_http_lua.c; rt.http builds its tables on
 * them). */
#define CPX_CORS_HEADERS                                                       \
  {CPX_STR("Access-Control-Allow-Origin"), CPX_STR("*")},                      \
      {CPX_STR("Access-Control-Allow-Methods"),                                \
       CPX_STR("GET, POST, PUT, PATCH, DELETE, OPTIONS")},                     \
  {                                                                            \
    CPX_STR("Access-Control-Allow-Headers"), CPX_STR("*")                      \
  }
/* CORS, then Content-Type: application/json (the last entry, so a caller
 * may copy the array and replace the type). */
#define CPX_JSON_HEADERS_N 4
extern const cpx_header_t cpx_json_headers[CPX_JSON_HEADERS_N];
/* The head of an SSE answer: CORS, Content-Type: text/event-stream,
 * Cache-Control: no-cache and X-Accel-Buffering: no (no proxy buffering). */
#define CPX_SSE_HEADERS_N 6
extern const cpx_header_t cpx_sse_headers[CPX_SSE_HEADERS_N];

/* Complete response with a body (Content-Length). headers may be NULL. */
int cpx_request_respond(cpx_request_t *r, int status,
                        const cpx_header_t *headers, size_t nheaders,
                        const char *body, size_t len);
/* Starts a streamed response (chunked for HTTP/1.1). */
int cpx_request_start(cpx_request_t *r, int status, const cpx_header_t *headers,
                      size_t nheaders);
int cpx_request_write(cpx_request_t *r, const char *data, size_t len);
int cpx_request_finish(cpx_request_t *r);
/* Ends a response that cannot be completed (a body cut short): the
 * connection is closed so the client sees the truncation. on_abort is not
 * called (the caller knows). */
void cpx_request_abort(cpx_request_t *r);
/* Bytes queued towards the client and not yet written to the socket. */
size_t cpx_request_queued(const cpx_request_t *r);
/* 1 when the write queue is above the high-water mark. */
int cpx_request_congested(const cpx_request_t *r);
/* Header lookup on the request (name lower case). */
const char *cpx_request_header(const cpx_request_t *r, const char *name,
                               size_t *n);

#endif /* CPX_SERVER_H */
