/* cpx_metrics.h: process-wide counters behind GET /metrics (see
 * cpx_metrics.c); cpx.metrics in Lua. */
#ifndef CPX_METRICS_H
#define CPX_METRICS_H

#include "cpx.h"

/* Adds to the in-flight gauges (any thread; atomics). */
void cpx_metrics_inflight(int requests, int streams);

/* One finished request, as rt.record's fields (cpx.metrics.observe reads
 * them from a record table; the C relay fills it from its own record).
 * The strings are borrowed ("" or NULL: empty label). */
typedef struct {
  const char *endpoint, *status, *provider, *model, *path;
  double latency_ms, ttft_ms;
  int has_latency, has_ttft;
  double tokens[5]; /* input, output, reasoning, cache_read, cache_write */
} cpx_metrics_obs_t;

/* Counts it (takes the metrics lock; any thread). */
void cpx_metrics_observe(const cpx_metrics_obs_t *o);

struct lua_State;
/* Registers cpx.metrics into the table at the top of the stack. */
void cpx_metrics_lua_register(struct lua_State *L);

#endif /* CPX_METRICS_H */
