/* cpx_upstream.h: the upstream HTTP client of the Lua path (cpx.fetch,
 * req:pipe, logins). Two transports behind one interface:
 *   - cpx_h1 (cpx_h1.h), the worker's HTTP/1.1 keep-alive pool on the loop,
 *     for http and https URLs reached directly (no proxy), once the owner
 *     has handed the pool over with cpx_upstream_use_h1;
 *   - libcurl multi driven by uv_poll and one uv_timer on the loop, for
 *     everything else: a proxy (per request, proxy-url, or the *_proxy
 *     environment curl honours), user:pass@ URLs, HEAD, or no pool.
 * Why: a curl transfer's set-up (URL parse, handle reset, connection-cache
 * look-up, socket callbacks re-arming epoll) cost ~300 us of a translated
 * stream's time to first token; the pooled client sends a prebuilt head on
 * a kept-alive connection. f->h1 says which one a fetch uses.
 *
 * A fetch reports to its owner through on_event, always from the loop and
 * never from inside a curl callback (so the owner may start or cancel
 * fetches there): CPX_FETCH_HEADERS once the final status and headers are
 * in, CPX_FETCH_DONE once the transfer has ended (result 0 or negative).
 *
 * Body delivery has three modes. Until the owner chooses, body bytes are
 * held (up to a bound, then the transfer pauses). cpx_fetch_buffer collects
 * the whole body (bounded by max_body). cpx_fetch_sink hands bytes to a
 * callback as they arrive; the callback may return CPX_EAGAIN to refuse
 * them for now (the transfer pauses and the same bytes come again after
 * cpx_fetch_resume) - that is the backpressure path from a slow client.
 * The sink runs inside curl's write callback: it must not call any
 * cpx_fetch_* / curl function other than returning a code.
 *
 * Ownership: the owner frees a fetch with cpx_fetch_free at any time (it
 * cancels a running transfer); memory is released after the fetch's timer
 * handle has closed. No event is delivered after cpx_fetch_free.
 */
#ifndef CPX_UPSTREAM_H
#define CPX_UPSTREAM_H

#include <curl/curl.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_server.h"

typedef struct cpx_upstream_s cpx_upstream_t;
typedef struct cpx_fetch_s cpx_fetch_t;

/* CPX_FETCH_DATA: new body bytes were held (only while notify_data is set:
 * the owner is peeking at the first events before it commits). */
enum { CPX_FETCH_HEADERS = 1, CPX_FETCH_DONE = 2, CPX_FETCH_DATA = 8 };

typedef void (*cpx_fetch_event_cb)(cpx_fetch_t *f, int event);
/* Returns 0 (consumed), CPX_EAGAIN (pause; not consumed) or < 0 (abort). */
typedef int (*cpx_fetch_sink_cb)(cpx_fetch_t *f, const char *data, size_t len);

typedef struct {
  const char *method; /* default POST when body, else GET */
  const char *url;
  const cpx_header_t *headers;
  size_t nheaders;
  const char *body; /* copied, unless body_borrowed */
  size_t body_len;
  /* The caller keeps body valid and unchanged until cpx_fetch_free: it is
   * sent from where it is (cpx.fetch anchors the Lua string), saving a
   * copy of what can be a 100 KB request. */
  int body_borrowed;
  const char *proxy; /* NULL: global proxy; "" / "direct" / "none": none */
  uint64_t connect_timeout_ms;    /* 10 s, TLS included */
  uint64_t first_byte_timeout_ms; /* 300 s */
  uint64_t idle_timeout_ms;       /* 300 s between body bytes, not paused */
  size_t max_body;                /* buffered body bound: 64 MiB */
} cpx_fetch_opts_t;

struct cpx_upstream_s {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;     /* curl's timeout */
  uv_idle_t idle;       /* delivers deferred events */
  cpx_fetch_t *pending; /* fetches with undelivered events */
  char *proxy;          /* owned: global proxy-url or NULL */
  char *ca_file;        /* owned: upstream-ca-file or NULL (system store) */
  /* Reset easy handles kept for reuse: curl_easy_init allocates its
   * buffers anew each time, which showed up as a fifth of a small
   * request's CPU. Owned; cleaned up in cpx_upstream_close. */
  CURL *spare[64];
  int nspare;
  size_t running;
  int closed;
  /* The worker's h1 pool (borrowed; it outlives every fetch) or NULL. */
  struct cpx_h1_pool_s *h1;
  int env_proxy; /* an http(s)_proxy / all_proxy variable was set at init */
};

struct cpx_fetch_s {
  cpx_upstream_t *up;
  CURL *easy;
  struct curl_slist *hdrs; /* owned */
  char *req_body;          /* owned: the copied request body */
  const char *send_body;   /* req_body or the caller's borrowed bytes */
  uv_timer_t timer;        /* first-byte / idle deadline */
  int status;
  char *resp_headers; /* owned: "name: value\r\n" lines of the final response */
  size_t resp_headers_len, resp_headers_cap;
  int headers_done;
  int done;
  int result; /* 0 or negative once done */
  char errmsg[CURL_ERROR_SIZE];
  int mode;   /* 0 hold, 1 buffer, 2 sink */
  char *body; /* owned: held or buffered bytes */
  size_t body_len, body_cap, max_body;
  size_t body_read; /* sink mode: held bytes already delivered */
  int paused;
  int notify_data; /* owner wants CPX_FETCH_DATA for held bytes */
  int in_multi;
  int freed;
  uint64_t first_byte_ms, idle_ms;
  unsigned events; /* undelivered events (bit mask) */
  cpx_fetch_t *next_pending;
  int queued;
  cpx_fetch_event_cb on_event;
  cpx_fetch_sink_cb sink;
  void *data; /* owner's */
  uint64_t bytes_in;
  struct cpx_h1_fetch_s *h1; /* owned: the cpx_h1 transfer; NULL with curl */
};

int cpx_upstream_init(cpx_upstream_t *up, uv_loop_t *loop, const char *proxy);
void cpx_upstream_set_proxy(cpx_upstream_t *up, const char *proxy);
/* Fetches that need no proxy go through pool from now on (NULL: all on
 * libcurl). The pool must outlive the fetches started through it. */
void cpx_upstream_use_h1(cpx_upstream_t *up, struct cpx_h1_pool_s *pool);
/* The CA certificates (PEM file) that upstream servers are checked against
 * instead of the system store; NULL or "" for the system store. */
void cpx_upstream_set_ca(cpx_upstream_t *up, const char *ca_file);
/* The same rule on any easy handle (the doctor's probes). */
void cpx_upstream_apply_ca(CURL *e, const char *ca_file);
void cpx_upstream_close(cpx_upstream_t *up);

int cpx_fetch_start(cpx_upstream_t *up, const cpx_fetch_opts_t *opts,
                    cpx_fetch_event_cb on_event, void *data, cpx_fetch_t **out);
void cpx_fetch_buffer(cpx_fetch_t *f);
void cpx_fetch_sink(cpx_fetch_t *f, cpx_fetch_sink_cb sink);
void cpx_fetch_resume(cpx_fetch_t *f);
void cpx_fetch_free(cpx_fetch_t *f);

#endif /* CPX_UPSTREAM_H */
