/* cpx_metrics.h: process-wide counters behind GET /metrics (see
 * cpx_metrics.c); cpx.metrics in Lua. */
#ifndef CPX_METRICS_H
#define CPX_METRICS_H

#include "cpx.h"

/* Adds to the in-flight gauges (any thread; atomics). */
void cpx_metrics_inflight(int requests, int streams);

struct lua_State;
/* Registers cpx.metrics into the table at the top of the stack. */
void cpx_metrics_lua_register(struct lua_State *L);

#endif /* CPX_METRICS_H */
