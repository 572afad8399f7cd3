/* cpx_lane.h: the C fast path for same-format passthrough.
 *
 * A Chat Completions request whose model is served only by plain-http
 * OpenAI-compatible upstreams, with no middleware, payload rule, proxy or
 * session affinity in the way, needs nothing from Lua but the decisions Lua
 * already made at load time. rt.lane compiles those decisions into a route
 * table per generation (cpx.lane.configure); this file then serves such a
 * request entirely in C:
 *
 *   client key check (constant time) -> "model"/"stream" read by the
 *   structure scanner -> pool pick (cpx_pool) -> model rewritten by
 *   splicing buffers, prebuilt head -> cpx_h1 keep-alive connection ->
 *   status 2xx: the answer relayed as it arrives (a stream is held until
 *   its first event, which must not be an error), with backpressure.
 *
 * Anything else goes to Lua, unchanged: a request the lane cannot read or
 * route before sending is handled by rt.server as usual; an upstream
 * failure before the first byte to the client (transport error, non-2xx,
 * an error as the first stream event) is handed to rt.server with the
 * attempt attached (info.lane), so rt.pool classifies it, cools the account
 * and retries exactly as if Lua had sent it.
 *
 * Ownership: cpx_lane_t is reference counted: its VM generation holds one
 * (vm->lane, dropped when the generation closes or rt.lane installs a new
 * table) and every request served from it one. A request also holds a
 * reference on the generation and on the cpx_request_t until it ends.
 */
#ifndef CPX_LANE_H
#define CPX_LANE_H

#include <stdint.h>

#include <lua.h>

#include "cpx_server.h"

typedef struct cpx_lane_s cpx_lane_t;
struct cpx_worker_s;

/* Serves r when it qualifies. Returns 1 when taken, 0 to leave it to Lua. */
int cpx_lane_try(struct cpx_worker_s *w, cpx_request_t *r);
/* Drops the generation's reference (requests in flight keep theirs). */
void cpx_lane_free(cpx_lane_t *l);
/* The lane's request records (rt.record): a worker's list is handed to
 * its current generation's app.lane_records after the loop iteration that
 * finished them. init/close: with the worker's Lua glue. */
void cpx_lane_records_init(struct cpx_worker_s *w);
void cpx_lane_records_close(struct cpx_worker_s *w);
/* Records dropped because a worker's list was full (process-wide). */
uint64_t cpx_lane_records_dropped(void);

/* Adds cpx.lane (configure) to the table at the top of the stack. */
void cpx_lane_lua_register(lua_State *L);

#endif /* CPX_LANE_H */
