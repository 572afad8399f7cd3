/* cpx_metrics.c: process-wide counters for GET /metrics (Prometheus text
 * format), fed from the request record (rt.metrics subscribes to
 * rt.record) and, for what is in flight, by the server itself.
 *
 * Series are keyed by their label text and kept in fixed tables behind one
 * lock: at most SERIES_MAX per family, after which new label sets are
 * counted under a single overflow series, so a client that invents model
 * names cannot grow memory. */
#include "cpx_metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "cpx_buf.h"
#include "cpx_usage.h"

#define SERIES_MAX 2048
#define LABELS_MAX 512
#define OVERFLOW_LABELS "overflow=\"true\""

static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                 2.5,   5,    10,    30,   60,  120,  300};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

typedef struct {
  char labels[LABELS_MAX];
  double value;              /* counters */
  uint64_t counts[NBUCKETS]; /* histograms: per bucket (not cumulative) */
  uint64_t count;
  double sum;
} series_t;

typedef struct {
  const char *name, *help, *type;
  int histogram;
  series_t *s; /* SERIES_MAX + 1 (the overflow series last) */
  size_t n;
} family_t;

enum { F_REQUESTS, F_TOKENS, F_LATENCY, F_TTFT, NFAM };

static family_t fams[NFAM] = {
    {"cliproxy_requests_total",
     "Finished client requests by endpoint, status, provider and model.",
     "counter", 0, NULL, 0},
    {"cliproxy_tokens_total", "Tokens by kind, provider and model.", "counter",
     0, NULL, 0},
    {"cliproxy_request_duration_seconds",
     "Time from the request to the end of its answer.", "histogram", 1, NULL,
     0},
    {"cliproxy_time_to_first_token_seconds",
     "Time until a stream's first event reached the client.", "histogram", 1,
     NULL, 0},
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic long inflight_requests, inflight_streams;

void cpx_metrics_inflight(int requests, int streams) {
  inflight_requests += requests;
  inflight_streams += streams;
}

/* Finds or adds the series with these labels (mu held); NULL only when
 * memory runs out. */
static series_t *series(family_t *f, const char *labels) {
  if (!f->s) {
    f->s = calloc(SERIES_MAX + 1, sizeof(series_t));
    if (!f->s)
      return NULL;
  }
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->s[i].labels, labels) == 0)
      return &f->s[i];
  if (f->n >= SERIES_MAX) {
    series_t *o = &f->s[SERIES_MAX];
    snprintf(o->labels, sizeof(o->labels), "%s", OVERFLOW_LABELS);
    return o;
  }
  snprintf(f->s[f->n].labels, LABELS_MAX, "%s", labels);
  return &f->s[f->n++];
}

/* Appends name="value" with the text format's escapes. */
static void label(char *out, size_t cap, const char *name, const char *v) {
  size_t n = strlen(out);
  if (n && n + 1 < cap)
    out[n++] = ',';
  n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%s=\"", name);
  for (; v && *v && n + 3 < cap; v++) {
    if (*v == '\\' || *v == '"') {
      out[n++] = '\\';
      out[n++] = *v;
    } else if (*v == '\n') {
      out[n++] = '\\';
      out[n++] = 'n';
    } else {
      out[n++] = *v;
    }
  }
  if (n + 1 < cap)
    out[n++] = '"';
  out[n < cap ? n : cap - 1] = '\0';
}

static void observe_hist(family_t *f, const char *labels, double v) {
  series_t *s = series(f, labels);
  if (!s)
    return;
  for (size_t i = 0; i < NBUCKETS; i++) {
    if (v <= buckets[i]) {
      s->counts[i]++;
      break;
    }
  }
  s->count++;
  s->sum += v;
}

void cpx_metrics_observe(const cpx_metrics_rec_t *r) {
  char labels[LABELS_MAX], pl[LABELS_MAX];
  static const char *const kinds[CPX_METRICS_TOKEN_KINDS] = {
      "input", "output", "reasoning", "cache_read", "cache_write"};

  labels[0] = pl[0] = '\0';
  label(labels, sizeof(labels), "endpoint", r->endpoint);
  label(labels, sizeof(labels), "status", r->status);
  label(labels, sizeof(labels), "provider", r->provider);
  label(labels, sizeof(labels), "model", r->model);
  label(labels, sizeof(labels), "path", r->path);
  label(pl, sizeof(pl), "provider", r->provider);

  pthread_mutex_lock(&mu);
  {
    series_t *s = series(&fams[F_REQUESTS], labels);
    if (s)
      s->value += 1;
  }
  for (int i = 0; i < CPX_METRICS_TOKEN_KINDS; i++) {
    char tl[LABELS_MAX];
    series_t *s;
    if (r->tokens[i] <= 0)
      continue;
    tl[0] = '\0';
    label(tl, sizeof(tl), "kind", kinds[i]);
    label(tl, sizeof(tl), "provider", r->provider);
    label(tl, sizeof(tl), "model", r->model);
    s = series(&fams[F_TOKENS], tl);
    if (s)
      s->value += r->tokens[i];
  }
  if (r->has_latency)
    observe_hist(&fams[F_LATENCY], pl, r->latency_ms / 1000);
  if (r->has_ttft)
    observe_hist(&fams[F_TTFT], pl, r->ttft_ms / 1000);
  pthread_mutex_unlock(&mu);
}

static void put(char **b, size_t *n, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void put(char **b, size_t *n, size_t *cap, const char *fmt, ...) {
  char line[LABELS_MAX + 256];
  va_list ap;
  int k;
  va_start(ap, fmt);
  k = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (k > 0)
    cpx_buf_append(b, n, cap, line,
                   (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
}

static void render_family(char **b, size_t *n, size_t *cap, family_t *f) {
  size_t total = f->n + (f->s && f->s[SERIES_MAX].labels[0] ? 1 : 0);
  put(b, n, cap, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
      f->type);
  for (size_t i = 0; i < total; i++) {
    series_t *s = i < f->n ? &f->s[i] : &f->s[SERIES_MAX];
    if (!f->histogram) {
      put(b, n, cap, "%s{%s} %.17g\n", f->name, s->labels, s->value);
      continue;
    }
    uint64_t cum = 0;
    for (size_t k = 0; k < NBUCKETS; k++) {
      cum += s->counts[k];
      put(b, n, cap, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels,
          s->labels[0] ? "," : "", buckets[k], (unsigned long long)cum);
    }
    put(b, n, cap, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels,
        s->labels[0] ? "," : "", (unsigned long long)s->count);
    put(b, n, cap, "%s_sum{%s} %.17g\n", f->name, s->labels, s->sum);
    put(b, n, cap, "%s_count{%s} %llu\n", f->name, s->labels,
        (unsigned long long)s->count);
  }
}

/* When the process started (wall clock, seconds): set once by the first
 * cpx_metrics_start, which the binding's registration calls while the
 * server starts, before it serves. Reloads register again and keep it. */
static pthread_once_t start_once = PTHREAD_ONCE_INIT;
static double process_start;
static void set_start(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  process_start = (double)tv.tv_sec + tv.tv_usec / 1e6;
}

void cpx_metrics_start(void) {
  pthread_once(&start_once, set_start);
}

char *cpx_metrics_render(uint64_t lane_dropped, size_t *len) {
  char *b = NULL;
  size_t n = 0, cap = 0;
  cpx_usage_stats_t st;

  pthread_mutex_lock(&mu);
  for (int i = 0; i < NFAM; i++)
    render_family(&b, &n, &cap, &fams[i]);
  pthread_mutex_unlock(&mu);
  put(&b, &n, &cap,
      "# HELP process_start_time_seconds Start time of the process since "
      "unix epoch in seconds.\n"
      "# TYPE process_start_time_seconds gauge\n"
      "process_start_time_seconds %.3f\n",
      process_start);
  put(&b, &n, &cap,
      "# HELP cliproxy_requests_in_flight Client requests being answered.\n"
      "# TYPE cliproxy_requests_in_flight gauge\n"
      "cliproxy_requests_in_flight %ld\n",
      (long)inflight_requests);
  put(&b, &n, &cap,
      "# HELP cliproxy_streams_in_flight Streamed answers in progress.\n"
      "# TYPE cliproxy_streams_in_flight gauge\n"
      "cliproxy_streams_in_flight %ld\n",
      (long)inflight_streams);
  cpx_usage_stats(&st);
  put(&b, &n, &cap,
      "# HELP cliproxy_usage_records_total Request records by what the usage "
      "store did with them.\n"
      "# TYPE cliproxy_usage_records_total counter\n"
      "cliproxy_usage_records_total{result=\"written\"} %llu\n"
      "cliproxy_usage_records_total{result=\"dropped\"} %llu\n"
      "cliproxy_usage_records_total{result=\"failed\"} %llu\n",
      (unsigned long long)st.written, (unsigned long long)st.dropped,
      (unsigned long long)st.failed);
  put(&b, &n, &cap,
      "# HELP cliproxy_usage_queue_records Records waiting for the usage "
      "writer.\n"
      "# TYPE cliproxy_usage_queue_records gauge\n"
      "cliproxy_usage_queue_records %zu\n",
      st.queued);
  put(&b, &n, &cap,
      "# HELP cliproxy_lane_records_dropped_total Fast-lane records dropped "
      "(a worker's list was full).\n"
      "# TYPE cliproxy_lane_records_dropped_total counter\n"
      "cliproxy_lane_records_dropped_total %llu\n",
      (unsigned long long)lane_dropped);
  *len = n;
  return b;
}

void cpx_metrics_reset(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < NFAM; i++) {
    free(fams[i].s);
    fams[i].s = NULL;
    fams[i].n = 0;
  }
  pthread_mutex_unlock(&mu);
}
