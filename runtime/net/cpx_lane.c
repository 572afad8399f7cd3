/* cpx_lane.c: the C fast path (see cpx_lane.h). */
#include "cpx_lane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpx_access.h"
#include "cpx_buf.h"
#include "cpx_errbody.h"
#include "cpx_errreply.h"
#include "cpx_json_scan.h"
#include "cpx_log.h"
#include "cpx_pool.h"
#include "cpx_sse.h"
#include "cpx_store.h"

/* Bodies held before anything is sent to the client: an upstream error
 * (handed to Lua), a small non-stream answer (sent in one write), a stream
 * until its first event. Past these the lane gives up holding. */
#define HOLD_MAX (1024 * 1024)
/* Bytes kept of each end of an answer for its record. */
#define RECORD_TAIL 4096

/* ---- the route table ---------------------------------------------------- */

/* Filled by cpx.lane.configure (runtime/lua/cpx_lane_lua.c) from rt.lane's
 * table; immutable once sealed. */

static void target_free(cpx_lane_target_t *t, size_t nslots) {
  free(t->host);
  free(t->head);
  free(t->head_stream);
  free(t->model);
  if (t->slot_lines) {
    for (size_t i = 0; i < nslots; i++)
      free((char *)t->slot_lines[i].p);
    free(t->slot_lines);
  }
}

static void model_free(cpx_lane_model_t *m) {
  for (size_t j = 0; j < m->ntargets; j++)
    target_free(&m->targets[j], m->nslots);
  free(m->targets);
  free(m->name);
  free(m->group);
  free(m->unless);
  for (size_t j = 0; j < m->nat_most; j++)
    free(m->at_most[j].text);
  free(m->at_most);
  for (size_t j = 0; j < m->nlua_headers; j++)
    free(m->lua_headers[j]);
  free(m->lua_headers);
  for (size_t j = 0; j < m->nslots; j++) {
    free(m->slots[j].client);
    free(m->slots[j].prefix);
  }
  free(m->slots);
}

/* A rebuilt table (credential files changed) replaces the generation's
 * while requests still send from the old one: each request holds a
 * reference. */
static void lane_unref(cpx_lane_t *l) {
  if (!l || --l->refs > 0)
    return;
  for (size_t i = 0; i < l->nroutes; i++) {
    cpx_lane_route_t *rt = &l->routes[i];
    for (size_t j = 0; j < rt->nmodels; j++)
      model_free(&rt->models[j]);
    free(rt->models);
    for (size_t j = rt->nfixed; j < rt->nkeys; j++)
      free((char *)rt->keys[j].p);
    free(rt->keys);
    free(rt->path);
  }
  free(l->routes);
  for (size_t i = 0; i < l->nkeys; i++)
    free(l->keys[i]);
  free(l->keys);
  free(l->key_lens);
  free(l);
}

void cpx_lane_free(cpx_lane_t *l) {
  lane_unref(l);
}

cpx_lane_t *cpx_lane_new(void) {
  cpx_lane_t *l = calloc(1, sizeof(*l));
  if (l)
    l->refs = 1;
  return l;
}

static int model_cmp(const void *a, const void *b);

void cpx_lane_seal(cpx_lane_t *l) {
  for (size_t i = 0; i < l->nroutes; i++)
    qsort(l->routes[i].models, l->routes[i].nmodels, sizeof(cpx_lane_model_t),
          model_cmp);
}

static int model_cmp(const void *a, const void *b) {
  const cpx_lane_model_t *x = a, *y = b;
  size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
  int c = memcmp(x->name, y->name, n);
  if (c)
    return c;
  return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

static const cpx_lane_model_t *model_find(const cpx_lane_route_t *rt,
                                          const char *name, size_t n) {
  size_t lo = 0, hi = rt->nmodels;
  cpx_lane_model_t key;
  key.name = (char *)name;
  key.name_len = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = model_cmp(&key, &rt->models[mid]);
    if (c == 0)
      return &rt->models[mid];
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

/* ---- one request -------------------------------------------------------- */

enum {
  P_WAIT,     /* request sent, no head yet */
  P_HOLD_ERR, /* non-2xx: collecting the body for Lua */
  P_HOLD_OK,  /* 2xx non-stream with a small Content-Length: collecting */
  P_BOOT,     /* 2xx stream: collecting until the first event */
  P_RELAY,    /* the client has the head: bytes go straight through */
};

typedef struct {
  cpx_h1_req_t q;
  cpx_request_t *r;
  const cpx_lane_host_t *host;
  void *gen;        /* one host reference */
  cpx_lane_t *lane; /* one reference: rt, m and t point into it */
  const cpx_lane_route_t *rt;
  const cpx_lane_model_t *m;
  cpx_pool_choice_t pick;
  int reported; /* the pool heard the outcome (or Lua will) */
  int stream;
  int phase;
  /* the head's variable part: the client's slot headers, Content-Length
   * and the blank line (xbuf when it fits, else malloc'd) */
  char *extra;
  char xbuf[192];
  char *acc; /* held bytes (see HOLD_MAX) */
  size_t acc_len, acc_cap;
  cpx_sse_t sse; /* P_BOOT only */
  int sse_on;
  int nevents;     /* P_BOOT: handshake events seen */
  int first_error; /* P_BOOT: the first real event is an error */
  char *ev_name, *ev_data;
  size_t ev_name_len, ev_data_len;
  int seen_event;
  /* the request record (rt.record) */
  int handed;       /* Lua took the request: it records it */
  int key_index;    /* 1-based index of the client key in api-keys, 0: none */
  double ttft_ms;   /* the client's head went out (streams), or -1 */
  uint64_t relayed; /* bytes sent to the client */
  size_t head_len;  /* the first bytes relayed (Claude's usage */
  char head[RECORD_TAIL]; /* starts in message_start) ... */
  size_t tail_len;        /* ... and the last ones (the rest of it) */
  char tail[RECORD_TAIL];
} lane_req_t;

static const cpx_h1_cb_t lane_cb;

static void report(lane_req_t *lq, int result) {
  if (lq->reported)
    return;
  lq->reported = 1;
  cpx_pool_report(cpx_pool_global(), lq->pick.state, lq->pick.probe, result, 0);
}

static void record_push(lane_req_t *lq);

/* Drops everything the lane holds for the request (and records it, when
 * the lane answered it). */
static void lane_free(lane_req_t *lq) {
  cpx_request_t *r = lq->r;
  if (!lq->handed)
    record_push(lq);
  if (r->handler_data == lq) {
    r->handler_data = NULL;
    r->on_abort = NULL;
    r->on_drain = NULL;
    r->on_shutdown = NULL;
  }
  if (lq->sse_on)
    cpx_sse_free(&lq->sse);
  cpx_h1_req_free(&lq->q);
  if (lq->extra != lq->xbuf)
    free(lq->extra);
  free(lq->acc);
  free(lq->ev_name);
  free(lq->ev_data);
  cpx_request_unref(r);
  lane_unref(lq->lane);
  lq->host->unref(lq->gen);
  free(lq);
}

static int hold(lane_req_t *lq, const char *p, size_t n) {
  if (lq->acc_len + n > HOLD_MAX)
    return CPX_ELIMIT;
  return cpx_buf_append(&lq->acc, &lq->acc_len, &lq->acc_cap, p, n);
}

/* cliproxy's own error, in the client's envelope. */
static void respond_error(lane_req_t *lq, int status, const char *msg) {
  cpx_errbody_respond(lq->r, status, "server_error", "upstream_error", msg);
}

/* After the first byte the error can only be the codec's stream event. */
static void stream_error_end(lane_req_t *lq, const char *msg) {
  cpx_errbody_write_event(lq->r, 502, "server_error", "upstream_error", msg);
  cpx_request_finish(lq->r);
}

/* ---- hand-off to the host ---------------------------------------------- */

/* The upstream failed before the client saw a byte: the host (rt.server)
 * takes the request over with this attempt attached; the pool pick goes
 * with it. */
static void handoff(lane_req_t *lq, int rc) {
  cpx_request_t *r = lq->r;
  const cpx_h1_req_t *q = &lq->q;
  cpx_lane_attempt_t a;

  memset(&a, 0, sizeof(a));
  a.pick = &lq->pick;
  a.group = lq->m->group;
  a.rc = rc;
  if (rc != 0) {
    a.err = q->err ? q->err : cpx_strerror(rc);
  } else {
    a.status = q->status;
    a.q = q;
    if (lq->phase == P_BOOT) {
      a.first_event = 1;
      a.event.p = lq->ev_name ? lq->ev_name : "";
      a.event.n = lq->ev_name_len;
      a.data.p = lq->ev_data ? lq->ev_data : "";
      a.data.n = lq->ev_data_len;
    } else {
      a.body.p = lq->acc ? lq->acc : "";
      a.body.n = lq->acc_len;
    }
  }
  lq->reported = 1; /* the host reports the pick */
  lq->handed = 1;   /* and records the request */
  r->handler_data = NULL;
  r->on_abort = NULL;
  r->on_drain = NULL;
  r->on_shutdown = NULL;
  r->tag = NULL;
  if (r->conn && !r->finished)
    lq->host->handoff(lq->gen, r, &a);
  else
    cpx_pool_report(cpx_pool_global(), lq->pick.state, lq->pick.probe,
                    CPX_POOL_NEUTRAL, 0); /* nobody left to answer */
  lane_free(lq);
}

/* ---- the response ------------------------------------------------------- */

static const char *fail_text(const cpx_h1_req_t *q, int rc) {
  return q->err ? q->err : cpx_strerror(rc);
}

/* Keeps the first RECORD_TAIL bytes sent to the client and the last
 * RECORD_TAIL after those. */
static void keep_tail(lane_req_t *lq, const char *p, size_t n) {
  lq->relayed += n;
  if (lq->head_len < RECORD_TAIL) {
    size_t k = RECORD_TAIL - lq->head_len;
    if (k > n)
      k = n;
    memcpy(lq->head + lq->head_len, p, k);
    lq->head_len += k;
    p += k;
    n -= k;
  }
  if (n == 0)
    return;
  if (n >= RECORD_TAIL) {
    memcpy(lq->tail, p + n - RECORD_TAIL, RECORD_TAIL);
    lq->tail_len = RECORD_TAIL;
    return;
  }
  if (lq->tail_len + n > RECORD_TAIL) {
    size_t keep = RECORD_TAIL - n;
    memmove(lq->tail, lq->tail + lq->tail_len - keep, keep);
    lq->tail_len = keep;
  }
  memcpy(lq->tail + lq->tail_len, p, n);
  lq->tail_len += n;
}

static int relay(lane_req_t *lq, const char *p, size_t n) {
  if (n == 0)
    return 0;
  keep_tail(lq, p, n);
  if (cpx_request_write(lq->r, p, n) != 0)
    return -1;
  if (cpx_request_congested(lq->r))
    cpx_h1_pause(&lq->q);
  return 0;
}

/* Held stream events until the first real one (cpx_stream_event_kind
 * decides, for rt.pipeline's bootstrap too). */
#define BOOT_MAX_EVENTS 16

static int on_first_event(void *ud, const cpx_sse_event_t *ev) {
  lane_req_t *lq = ud;
  int kind = cpx_stream_event_kind(lq->rt->fmt, ev->event.p, ev->event.n,
                                   ev->data.p, ev->data.n);
  if (kind == CPX_EV_HANDSHAKE && ++lq->nevents < BOOT_MAX_EVENTS)
    return 0;
  if (kind == CPX_EV_ERROR) {
    lq->first_error = 1;
    lq->ev_name = malloc(ev->event.n + 1);
    lq->ev_data = malloc(ev->data.n + 1);
    if (lq->ev_name && lq->ev_data) {
      memcpy(lq->ev_name, ev->event.p, ev->event.n);
      memcpy(lq->ev_data, ev->data.p, ev->data.n);
      lq->ev_name_len = ev->event.n;
      lq->ev_data_len = ev->data.n;
    }
  }
  lq->seen_event = 1;
  return 1;
}

/* The client's head for a 2xx: SSE for a stream, else JSON with the
 * upstream's own content type when it gave one (hs: room for a copy). */
static const cpx_header_t *
answer_headers(lane_req_t *lq, cpx_header_t hs[CPX_JSON_HEADERS_N], size_t *n) {
  size_t ctn;
  const char *ct;
  if (lq->stream) {
    *n = CPX_SSE_HEADERS_N;
    return cpx_sse_headers;
  }
  *n = CPX_JSON_HEADERS_N;
  ct = cpx_h1_header(&lq->q, "content-type", &ctn);
  if (!ct)
    return cpx_json_headers;
  memcpy(hs, cpx_json_headers, sizeof(cpx_json_headers));
  hs[CPX_JSON_HEADERS_N - 1].value.p = ct;
  hs[CPX_JSON_HEADERS_N - 1].value.n = ctn;
  return hs;
}

/* Sends the client its head and whatever was held. */
static int start_relay(lane_req_t *lq) {
  cpx_header_t hs[CPX_JSON_HEADERS_N];
  size_t nh;
  const cpx_header_t *h = answer_headers(lq, hs, &nh);

  report(lq, CPX_POOL_OK);
  lq->phase = P_RELAY;
  lq->ttft_ms = (double)(uv_hrtime() - lq->r->start_ns) / 1e6;
  if (cpx_request_start(lq->r, 200, h, nh) != 0)
    return -1;
  if (lq->acc_len) {
    int rc = relay(lq, lq->acc, lq->acc_len);
    lq->acc_len = 0;
    return rc;
  }
  return 0;
}

static int on_head(cpx_h1_req_t *q) {
  lane_req_t *lq = q->data;
  size_t n;
  const char *cl;

  if (q->status < 200 || q->status >= 300) {
    lq->phase = P_HOLD_ERR;
    return 0;
  }
  if (lq->stream) {
    lq->phase = P_BOOT;
    cpx_sse_init(&lq->sse, HOLD_MAX);
    lq->sse_on = 1;
    return 0;
  }
  cl = cpx_h1_header(q, "content-length", &n);
  if (cl && n > 0 && n < 10 && strtoul(cl, NULL, 10) <= HOLD_MAX) {
    report(lq, CPX_POOL_OK);
    lq->phase = P_HOLD_OK;
    return 0;
  }
  return start_relay(lq);
}

static int on_body(cpx_h1_req_t *q, const char *p, size_t n) {
  lane_req_t *lq = q->data;
  int rc;

  switch (lq->phase) {
  case P_HOLD_ERR:
  case P_HOLD_OK:
    return hold(lq, p, n);
  case P_BOOT:
    if (hold(lq, p, n) != 0)
      return start_relay(lq); /* a first event past 1 MiB: stop looking */
    rc = cpx_sse_feed(&lq->sse, p, n, on_first_event, lq);
    if (!lq->seen_event && rc == 0)
      return 0;
    cpx_sse_free(&lq->sse);
    lq->sse_on = 0;
    if (lq->first_error)
      return -1; /* stop: on_done hands it to Lua */
    return start_relay(lq);
  case P_RELAY:
    return relay(lq, p, n);
  default:
    return -1;
  }
}

static void on_done(cpx_h1_req_t *q, int rc) {
  lane_req_t *lq = q->data;
  cpx_request_t *r = lq->r;

  if (!r->conn || r->finished) {
    /* The client left while we were inside the parser. */
    report(lq, CPX_POOL_NEUTRAL);
    lane_free(lq);
    return;
  }
  switch (lq->phase) {
  case P_WAIT:
    handoff(lq, rc ? rc : CPX_EIO);
    return;
  case P_HOLD_ERR:
    handoff(lq, rc);
    return;
  case P_BOOT:
    if (lq->first_error) {
      handoff(lq, 0);
      return;
    }
    /* The stream ended (or failed) before any event: what came is all. */
    if (start_relay(lq) != 0)
      break;
    if (rc)
      stream_error_end(lq, fail_text(q, rc));
    else
      cpx_request_finish(r);
    break;
  case P_HOLD_OK:
    if (rc) {
      char msg[128];
      snprintf(msg, sizeof(msg), "upstream body failed: %s", fail_text(q, rc));
      respond_error(lq, 502, msg);
      break;
    }
    {
      cpx_header_t hs[CPX_JSON_HEADERS_N];
      size_t nh;
      const cpx_header_t *h = answer_headers(lq, hs, &nh);
      if (lq->acc_len)
        keep_tail(lq, lq->acc, lq->acc_len);
      cpx_request_respond(r, 200, h, nh, lq->acc ? lq->acc : "", lq->acc_len);
    }
    break;
  case P_RELAY:
    if (rc == 0)
      cpx_request_finish(r);
    else if (lq->stream)
      stream_error_end(lq, fail_text(q, rc));
    else
      cpx_request_abort(r); /* a JSON body cut short: the client must see it */
    break;
  }
  lane_free(lq);
}

static const cpx_h1_cb_t lane_cb = {on_head, on_body, on_done};

/* ---- client events ------------------------------------------------------ */

static void on_req_abort(cpx_request_t *r) {
  lane_req_t *lq = r->handler_data;
  if (!lq)
    return;
  cpx_h1_cancel(&lq->q);
  report(lq, CPX_POOL_NEUTRAL);
  lane_free(lq);
}

static void on_req_drain(cpx_request_t *r) {
  lane_req_t *lq = r->handler_data;
  if (lq)
    cpx_h1_resume(&lq->q);
}

static void on_req_shutdown(cpx_request_t *r) {
  lane_req_t *lq = r->handler_data;
  if (!lq)
    return;
  cpx_h1_cancel(&lq->q);
  report(lq, CPX_POOL_NEUTRAL);
  if (lq->phase == P_RELAY) {
    if (lq->stream)
      stream_error_end(lq, "server shutting down");
    else
      cpx_request_abort(r);
  } else {
    respond_error(lq, 502, "upstream request failed: server shutting down");
  }
  lane_free(lq);
}

/* ---- taking a request --------------------------------------------------- */

/* The key the client presented (cpx_client_key: rt.access reads it the
 * same way; a request with a query string never comes here). */
static int key_ok(const cpx_lane_t *l, const cpx_request_t *r, int *which) {
  size_t an = 0, gn = 0, xn = 0, n;
  const char *a = cpx_request_header(r, "authorization", &an);
  const char *g = cpx_request_header(r, "x-goog-api-key", &gn);
  const char *x = cpx_request_header(r, "x-api-key", &xn);
  const char *k;
  int ok = 0;

  *which = 0;
  if (l->nkeys == 0)
    return 1;
  if (cpx_client_key(a, an, g, gn, x, xn, &k, &n) == CPX_KEY_NONE)
    return 0;
  /* Every key is compared, so the time does not say which one matched. */
  for (size_t i = 0; i < l->nkeys; i++) {
    int eq = cpx_secure_equal(k, n, l->keys[i], l->key_lens[i]);
    ok |= eq;
    /* which key (for the record's label), without a branch on it */
    *which += (int)(i + 1) * eq * (*which == 0);
  }
  return ok;
}

/* The route r's target names, with the model of a model-in-path route
 * (Gemini: /v1beta/models/M:generateContent, or
 * :streamGenerateContent?alt=sse for SSE; any other query stays in Lua). */
static const cpx_lane_route_t *route_find(const cpx_lane_t *l, const char *u,
                                          size_t n, const char **model,
                                          size_t *model_len, int *stream) {
  static const char gen[] = ":generateContent";
  static const char sse[] = ":streamGenerateContent?alt=sse";
  for (size_t i = 0; i < l->nroutes; i++) {
    const cpx_lane_route_t *rt = &l->routes[i];
    const char *m, *colon;
    size_t rest;
    if (!rt->model_in_path) {
      if (n == rt->path_len && memcmp(u, rt->path, n) == 0)
        return rt;
      continue;
    }
    if (n <= rt->path_len || memcmp(u, rt->path, rt->path_len) != 0)
      continue;
    m = u + rt->path_len;
    colon = memchr(m, ':', n - rt->path_len);
    if (!colon || colon == m)
      return NULL;
    rest = n - (size_t)(colon - u);
    if (rest == sizeof(gen) - 1 && memcmp(colon, gen, rest) == 0)
      *stream = 0;
    else if (rest == sizeof(sse) - 1 && memcmp(colon, sse, rest) == 0)
      *stream = 1;
    else
      return NULL;
    /* a name Lua would read differently (escapes, a sub-path) is Lua's */
    for (const char *c = m; c < colon; c++)
      if (*c == '/' || *c == '%' || *c == '?')
        return NULL;
    *model = m;
    *model_len = (size_t)(colon - m);
    return rt;
  }
  return NULL;
}

static long count_text(const char *s, size_t n, const cpx_lane_count_t *c) {
  long k = 0;
  const char *end = s + n, *p = s;
  while (p < end && (p = memmem(p, (size_t)(end - p), c->text, c->len))) {
    if (++k > c->max)
      break;
    p += c->len;
  }
  return k;
}

/* Lua's white space (%s): what its list split (providers/claude.lua's
 * add_betas) cuts at. */
static int list_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
         c == '\r';
}

int cpx_lane_list_plain(const char *v, size_t n) {
  const char *item[CPX_LANE_LIST_MAX];
  size_t len[CPX_LANE_LIST_MAX], k = 0, i = 0;

  if (n == 0)
    return 0;
  while (i <= n) {
    size_t s = i;
    while (i < n && v[i] != ',') {
      if (list_space(v[i]))
        return 0;
      i++;
    }
    if (i == s || k == CPX_LANE_LIST_MAX)
      return 0; /* an empty item (",," or a trailing comma), or too many */
    for (size_t j = 0; j < k; j++)
      if (len[j] == i - s && memcmp(item[j], v + s, i - s) == 0)
        return 0;
    item[k] = v + s;
    len[k++] = i - s;
    i++; /* past the comma (or past the end) */
  }
  return 1;
}

/* 1 when the slot's client header may go upstream as written: sent at
 * most once, and, for a list, already in the form prepare() gives it. */
static int slot_plain(const cpx_http_request_t *h, const cpx_lane_slot_t *s) {
  size_t nl = strlen(s->client), seen = 0;
  for (size_t i = 0; i < h->nfields; i++) {
    const cpx_http_field_t *f = &h->fields[i];
    if (f->name_len != nl || memcmp(h->buf + f->name_off, s->client, nl) != 0)
      continue;
    if (++seen > 1)
      return 0;
    /* (an empty value counts as none, as prepare() reads it) */
    if (s->list && f->value_len &&
        !cpx_lane_list_plain(h->buf + f->value_off, f->value_len))
      return 0;
  }
  return 1;
}

/* The request's own checks, as the model's providers declared them
 * (rt.lane): 1 when it may be relayed as written. */
static int rules_pass(const cpx_lane_route_t *rt, const cpx_lane_model_t *m,
                      const cpx_request_t *r, const cpx_str_t *vals) {
  const cpx_http_request_t *h = &r->http;
  uint32_t present = 0;
  size_t n;

  for (size_t i = rt->nfixed; i < rt->nkeys; i++)
    if (vals[i].p)
      present |= 1u << (i - rt->nfixed);
  if ((present & m->require) != m->require)
    return 0;
  for (size_t i = 0; i < m->nunless; i++)
    if ((present & m->unless[i]) == m->unless[i])
      return 0;
  for (size_t i = 0; i < m->nlua_headers; i++)
    if (cpx_request_header(r, m->lua_headers[i], &n))
      return 0;
  for (size_t i = 0; i < m->nslots; i++)
    if (!slot_plain(h, &m->slots[i]))
      return 0;
  for (size_t i = 0; i < m->nat_most; i++)
    if (count_text(h->body, h->body_len, &m->at_most[i]) > m->at_most[i].max)
      return 0;
  return 1;
}

/* The head's variable part into lq->extra: each slot's header (the
 * client's value, else the account's own line) and Content-Length. */
static int build_extra(lane_req_t *lq, const cpx_lane_target_t *t,
                       size_t clen) {
  const cpx_lane_model_t *m = lq->m;
  size_t need = 48, at = 0, vn;
  const char *v;
  char *o;

  /* (an empty value counts as none, as prepare() reads it) */
  for (size_t i = 0; i < m->nslots; i++) {
    v = cpx_request_header(lq->r, m->slots[i].client, &vn);
    need += v && vn ? m->slots[i].prefix_len + vn + 2 : t->slot_lines[i].n;
  }
  o = need <= sizeof(lq->xbuf) ? lq->xbuf : malloc(need);
  if (!o)
    return -1;
  lq->extra = o;
  for (size_t i = 0; i < m->nslots; i++) {
    v = cpx_request_header(lq->r, m->slots[i].client, &vn);
    if (v && vn) {
      memcpy(o + at, m->slots[i].prefix, m->slots[i].prefix_len);
      at += m->slots[i].prefix_len;
      memcpy(o + at, v, vn);
      at += vn;
      o[at++] = '\r';
      o[at++] = '\n';
    } else {
      memcpy(o + at, t->slot_lines[i].p, t->slot_lines[i].n);
      at += t->slot_lines[i].n;
    }
  }
  at +=
      (size_t)snprintf(o + at, need - at, "Content-Length: %zu\r\n\r\n", clen);
  return (int)at;
}

int cpx_lane_serve(cpx_lane_t *l, cpx_h1_pool_t *h1,
                   const cpx_lane_host_t *host, void *gen, cpx_request_t *r) {
  const cpx_http_request_t *h = &r->http;
  cpx_str_t vals[CPX_LANE_FIXED_KEYS + CPX_LANE_MEMBERS_MAX];
  const cpx_lane_route_t *rt;
  const cpx_lane_model_t *m;
  const cpx_lane_target_t *t;
  cpx_pool_pick_t pk = {NULL, 0, NULL, 0, -1};
  cpx_pool_choice_t choice;
  lane_req_t *lq;
  const char *name = NULL;
  size_t name_len = 0, pre = 0, post = 0;
  int n, key_index = 0, stream = 0;

  if (!l || !h->method || strcmp(h->method, "POST") != 0 || h->upgrade ||
      !h->body)
    return 0;
  rt =
      route_find(l, h->buf + h->url_off, h->url_len, &name, &name_len, &stream);
  if (!rt)
    return 0;
  if (l->check_store) {
    cpx_store_t *s = cpx_store_current();
    if (s && cpx_store_version(s) != l->store_version)
      return 0; /* Lua refreshes its registry and this table */
  }
  if (!key_ok(l, r, &key_index))
    return 0;
  /* one pass: the structure, "model" and "stream", the rules' members */
  if (cpx_json_top_get(h->body, h->body_len, rt->keys, vals, rt->nkeys) != 0)
    return 0;
  if (!rt->model_in_path) {
    /* model: a plain JSON string (no escapes) naming a lane model */
    if (!vals[0].p || vals[0].n < 2 || vals[0].p[0] != '"' ||
        memchr(vals[0].p, '\\', vals[0].n))
      return 0;
    name = vals[0].p + 1;
    name_len = vals[0].n - 2;
    stream = vals[1].p && vals[1].n == 4 && memcmp(vals[1].p, "true", 4) == 0;
  }
  m = model_find(rt, name, name_len);
  if (!m || !rules_pass(rt, m, r, vals))
    return 0;
  if (cpx_pool_pick(cpx_pool_global(), m->group, &pk, &choice, NULL) != 0)
    return 0; /* cooling or gone: Lua gives the proper answer */
  if (choice.member >= m->ntargets) {
    cpx_pool_report(cpx_pool_global(), choice.state, choice.probe,
                    CPX_POOL_NEUTRAL, 0);
    return 0;
  }
  t = &m->targets[choice.member];
  lq = calloc(1, sizeof(*lq));
  if (!lq) {
    cpx_pool_report(cpx_pool_global(), choice.state, choice.probe,
                    CPX_POOL_NEUTRAL, 0);
    return 0;
  }
  lq->r = r;
  lq->host = host;
  lq->gen = gen;
  lq->lane = l;
  l->refs++;
  lq->rt = rt;
  lq->m = m;
  lq->pick = choice;
  lq->key_index = key_index;
  lq->ttft_ms = -1;
  lq->stream = stream;
  lq->phase = P_WAIT;
  host->ref(gen);
  cpx_request_ref(r);

  /* head | slots, Content-Length | the body, its "model" value replaced
   * on a body route (before it | new value | after it) */
  if (!rt->model_in_path) {
    pre = (size_t)(vals[0].p - h->body);
    post = h->body_len - pre - vals[0].n;
    n = build_extra(lq, t, pre + t->model_len + post);
  } else {
    n = build_extra(lq, t, h->body_len);
  }
  if (n < 0) {
    report(lq, CPX_POOL_NEUTRAL);
    lq->handed = 1;
    lane_free(lq);
    return 0;
  }
  lq->q.cb = &lane_cb;
  lq->q.data = lq;
  lq->q.host = t->host;
  lq->q.port = t->port;
  lq->q.tls = t->tls;
  lq->q.bufs[0] =
      uv_buf_init(stream ? t->head_stream : t->head,
                  (unsigned)(stream ? t->head_stream_len : t->head_len));
  lq->q.bufs[1] = uv_buf_init(lq->extra, (unsigned)n);
  if (!rt->model_in_path) {
    lq->q.bufs[2] = uv_buf_init((char *)h->body, (unsigned)pre);
    lq->q.bufs[3] = uv_buf_init(t->model, (unsigned)t->model_len);
    lq->q.bufs[4] = uv_buf_init((char *)vals[0].p + vals[0].n, (unsigned)post);
    lq->q.nbufs = 5;
  } else {
    lq->q.bufs[2] = uv_buf_init((char *)h->body, (unsigned)h->body_len);
    lq->q.nbufs = 3;
  }

  r->handler_data = lq;
  r->on_abort = on_req_abort;
  r->on_drain = on_req_drain;
  r->on_shutdown = on_req_shutdown;
  r->tag = "fast";
  if (cpx_h1_send(h1, &lq->q) != 0) {
    /* Nothing went out: Lua sends it the usual way. */
    report(lq, CPX_POOL_NEUTRAL);
    r->tag = NULL;
    lq->handed = 1; /* Lua serves it, and records it */
    lane_free(lq);
    return 0;
  }
  return 1;
}

/* ---- request records ---------------------------------------------------- */

static _Atomic uint64_t records_dropped;

uint64_t cpx_lane_records_dropped(void) {
  return records_dropped;
}

void cpx_lane_record_free(cpx_lane_record_t *rec) {
  if (!rec)
    return;
  free(rec->model);
  free(rec->endpoint);
  free(rec);
}

/* The record of a request the relay answered, to the host. */
static void record_push(lane_req_t *lq) {
  cpx_request_t *r = lq->r;
  cpx_lane_record_t *rec;
  uint64_t now = uv_hrtime();
  struct timespec ts;
  const char *u = r->http.buf + r->http.url_off;
  const char *q = memchr(u, '?', r->http.url_len);
  size_t un = q ? (size_t)(q - u) : r->http.url_len;

  if (!lq->m)
    return;
  rec = calloc(1, sizeof(*rec) + lq->head_len + lq->tail_len);
  if (rec) {
    rec->model = malloc(lq->m->name_len + 1);
    rec->endpoint = malloc(un + 1);
  }
  if (!rec || !rec->model || !rec->endpoint) {
    cpx_lane_record_free(rec);
    records_dropped++;
    return;
  }
  memcpy(rec->endpoint, u, un);
  rec->endpoint[un] = '\0';
  memcpy(rec->model, lq->m->name, lq->m->name_len);
  rec->model[lq->m->name_len] = '\0';
  memcpy(rec->rid, r->rid, sizeof(rec->rid));
  rec->fmt = lq->rt->fmt;
  rec->member = (int)lq->pick.member + 1;
  rec->key_index = lq->key_index;
  rec->status = r->status;
  rec->stream = lq->stream;
  rec->aborted = r->aborted || !r->status;
  clock_gettime(CLOCK_REALTIME, &ts);
  rec->latency_ms = (double)(now - r->start_ns) / 1e6;
  rec->time = (double)ts.tv_sec + ts.tv_nsec / 1e9 - rec->latency_ms / 1e3;
  rec->ttft_ms = lq->ttft_ms;
  rec->head_len = lq->head_len;
  rec->tail_len = lq->tail_len;
  rec->gap = lq->relayed > lq->head_len + lq->tail_len;
  memcpy(rec->bytes, lq->head, lq->head_len);
  memcpy(rec->bytes + lq->head_len, lq->tail, lq->tail_len);
  if (lq->host->record(lq->gen, rec) != 0) {
    cpx_lane_record_free(rec);
    records_dropped++;
  }
}
