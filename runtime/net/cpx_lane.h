/* cpx_lane.h: the C relay for same-format passthrough.
 *
 * A request of a same-format route (Chat Completions, Anthropic Messages,
 * the Responses API, Gemini generateContent / streamGenerateContent?alt=sse)
 * whose model is served only by accounts whose provider declares `relay`,
 * with nothing in the way that must see the request, needs nothing from
 * Lua but the decisions Lua already made at load time. rt.lane compiles
 * those decisions into a route table per generation (cpx.lane.configure,
 * runtime/lua/cpx_lane_lua.c fills the structs below); this file then
 * serves such a request entirely in C:
 *
 *   route and model (path, or the body's "model" read by the structure
 *   scanner) -> client key check (constant time) -> the model's rules
 *   (top-level members, counts, headers) -> pool pick (cpx_pool) -> the
 *   account's prebuilt head, the client's slot headers, the body with its
 *   model spliced -> cpx_h1 keep-alive connection -> status 2xx: the answer
 *   relayed as it arrives (a stream is held until its first real event,
 *   which must not be an error: cpx_stream_event_kind), with backpressure.
 *
 * Anything else goes back to the caller untouched (0 from cpx_lane_serve);
 * an upstream failure before the first byte to the client (transport
 * error, non-2xx, an error as the first stream event) is handed to the
 * host with the attempt attached, so Lua classifies it, cools the account
 * and retries exactly as if it had sent it. This file knows nothing of Lua:
 * the host (cpx_lane_host_t) is the Lua glue in the server, a fake in
 * runtime/test/test_lane.c.
 *
 * Ownership: cpx_lane_t is reference counted: its generation holds one
 * (dropped by cpx_lane_free) and every request served from it one. A
 * request also holds a host reference on the generation (host->ref) and
 * one on the cpx_request_t until it ends. Every string and array in the
 * table is malloc'd and owned by the table.
 */
#ifndef CPX_LANE_H
#define CPX_LANE_H

#include <stdint.h>

#include "cpx_h1.h"
#include "cpx_pool.h"
#include "cpx_server.h"

/* Members a route's rules can name (one bit each in a mask). */
#define CPX_LANE_MEMBERS_MAX 24
/* "model" and "stream", read on every body-model route */
#define CPX_LANE_FIXED_KEYS 2

typedef struct cpx_lane_s cpx_lane_t;

typedef struct {
  char *host;
  int port;
  int tls;    /* https: cpx_h1 speaks TLS to host (SNI, certificate check) */
  char *head; /* request line and the fixed headers, without Content-Length */
  size_t head_len;
  char *head_stream; /* the same for a stream */
  size_t head_stream_len;
  char *model; /* the upstream model as a JSON string literal (body routes) */
  size_t model_len;
  cpx_str_t *slot_lines; /* per slot of the model: this account's own line
                          * when the client sent no such header ("" none) */
} cpx_lane_target_t;

/* A client header the upstream head carries as the client sent it. The
 * relay never edits a value: what Lua would send differently goes to Lua
 * (a header sent twice, which Lua reads joined; with list set, a value that
 * is not already a comma-separated list without blanks, spaces or repeats:
 * rt.lane checks that prepare() sends such a list as it is). */
typedef struct {
  char *client; /* lower case */
  char *prefix; /* "Upstream-Name: " */
  size_t prefix_len;
  int list; /* the value is a comma-separated list (Anthropic-Beta) */
} cpx_lane_slot_t;

/* 1 when v is a list the relay may send as written: items of bytes other
 * than ',' and white space, separated by single commas, none repeated, at
 * most CPX_LANE_LIST_MAX of them (a longer one is Lua's). */
#define CPX_LANE_LIST_MAX 64
int cpx_lane_list_plain(const char *v, size_t n);

/* At most max occurrences of text in the body. */
typedef struct {
  char *text;
  size_t len;
  long max;
} cpx_lane_count_t;

typedef struct {
  char *name; /* client model name */
  size_t name_len;
  char *group;                /* pool group */
  cpx_lane_target_t *targets; /* in pool member order */
  size_t ntargets;
  /* what every request is checked against before it is relayed */
  uint32_t *unless; /* member masks: all present -> Lua */
  size_t nunless;
  uint32_t require; /* members that must all be present */
  cpx_lane_count_t *at_most;
  size_t nat_most;
  char **lua_headers; /* a client header named here -> Lua */
  size_t nlua_headers;
  cpx_lane_slot_t *slots;
  size_t nslots;
} cpx_lane_model_t;

typedef struct {
  int fmt;           /* CPX_FMT_*: first-event errors, the record's usage */
  int model_in_path; /* Gemini: path + model + ":action"; else path exact */
  char *path;
  size_t path_len;
  cpx_str_t *keys; /* "model", "stream" (body routes), then the members */
  size_t nkeys, nfixed;
  cpx_lane_model_t *models; /* sorted by name (cpx_lane_seal) */
  size_t nmodels;
} cpx_lane_route_t;

struct cpx_lane_s {
  int refs; /* the generation's + one per request in flight */
  cpx_lane_route_t *routes;
  size_t nroutes;
  char **keys; /* client api-keys; none = open */
  size_t *key_lens;
  size_t nkeys;
  int check_store; /* credential files can add targets: watch the store */
  uint64_t store_version;
};

/* A zeroed table with the generation's reference; NULL without memory. */
cpx_lane_t *cpx_lane_new(void);
/* Once filled: sorts each route's models (for the lookup). */
void cpx_lane_seal(cpx_lane_t *l);
/* Drops the generation's reference (requests in flight keep theirs). */
void cpx_lane_free(cpx_lane_t *l);

/* What the host gets when the relay hands a request back. Valid during
 * the call only. */
typedef struct {
  const cpx_pool_choice_t *pick; /* reported by the host from now on */
  const char *group;
  int rc;                /* a transport error (err says what), or 0 */
  const char *err;       /* static text */
  int status;            /* the upstream's status (rc == 0) */
  const cpx_h1_req_t *q; /* its head: q->fields, q->hbuf (rc == 0) */
  cpx_str_t body;        /* the held error body (no first event) */
  int first_event;       /* a 2xx stream whose first real event is an error */
  cpx_str_t event, data; /* that event */
} cpx_lane_attempt_t;

/* One request the relay served to the end, for rt.record. Owned by the
 * host once passed to record(). */
typedef struct cpx_lane_record_s {
  struct cpx_lane_record_s *next; /* the host's list */
  char *model;
  char *endpoint; /* the path, without the query */
  char rid[9];
  int fmt, member, key_index, status, stream, aborted;
  int gap; /* bytes were relayed between head and tail */
  double time, latency_ms, ttft_ms;
  size_t head_len, tail_len;
  char bytes[]; /* head_len bytes of the head, then tail_len of the tail */
} cpx_lane_record_t;

typedef struct {
  /* The generation a request is served from (gen): kept while it runs. */
  void (*ref)(void *gen);
  void (*unref)(void *gen);
  /* The upstream failed before the client saw a byte: the host takes r
   * over (r's handler callbacks are cleared; the pick is the host's). Not
   * called when the client has gone: the pick is then reported neutral. */
  void (*handoff)(void *gen, cpx_request_t *r, const cpx_lane_attempt_t *a);
  /* A finished request's record: the host owns rec (free with
   * cpx_lane_record_free), or returns -1 to refuse it (counted dropped). */
  int (*record)(void *gen, cpx_lane_record_t *rec);
} cpx_lane_host_t;

/* Serves r from table l when it qualifies: 1 when taken, 0 to leave it to
 * the caller (nothing was sent, r is untouched). h1: the loop's upstream
 * connections. */
int cpx_lane_serve(cpx_lane_t *l, cpx_h1_pool_t *h1,
                   const cpx_lane_host_t *host, void *gen, cpx_request_t *r);

void cpx_lane_record_free(cpx_lane_record_t *rec);
/* Records dropped (memory, or refused by the host), process-wide. */
uint64_t cpx_lane_records_dropped(void);

#endif /* CPX_LANE_H */
