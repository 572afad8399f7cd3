/* cpx_metrics.h: process-wide counters behind GET /metrics (see
 * cpx_metrics.c); cpx.metrics in Lua is runtime/lua/cpx_metrics_lua.c. */
#ifndef CPX_METRICS_H
#define CPX_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "cpx.h"

/* Adds to the in-flight gauges (any thread; atomics). */
void cpx_metrics_inflight(int requests, int streams);

/* One finished request: the label values (NULL or "" for none; each is
 * escaped for the text format and cut to fit) and what it measured. */
#define CPX_METRICS_TOKEN_KINDS                                                \
  5 /* input output reasoning cache_read                                       \
       cache_write */
typedef struct {
  const char *endpoint, *status, *provider, *model, *path;
  double latency_ms, ttft_ms; /* valid when has_latency / has_ttft */
  int has_latency, has_ttft;
  double tokens[CPX_METRICS_TOKEN_KINDS]; /* 0: none */
} cpx_metrics_rec_t;

/* Counts r (any thread; behind the families' lock). A family keeps at
 * most 2048 label sets, later ones count under overflow="true". */
void cpx_metrics_observe(const cpx_metrics_rec_t *r);
/* The text of every C-side family plus the process, in-flight, usage-store
 * and lane gauges (lane_dropped: cpx_lane_records_dropped(), passed in as
 * state/ sits below the lane's net/): a malloc'd buffer of *len bytes the
 * caller frees (NULL with *len 0 when memory ran out). */
char *cpx_metrics_render(uint64_t lane_dropped, size_t *len);
/* Forgets every series (tests). */
void cpx_metrics_reset(void);
/* Records the process start time, once (later calls keep it). */
void cpx_metrics_start(void);

#endif /* CPX_METRICS_H */
