/* cpx_lane_lua.h: the C relay's Lua glue (cpx_lane_lua.c): the relay of
 * runtime/net/cpx_lane.c with rt.server as its host. */
#ifndef CPX_LANE_LUA_H
#define CPX_LANE_LUA_H

#include <lua.h>

#include "cpx_server.h"

struct cpx_worker_s;

/* Serves r from the worker's current generation's table when it
 * qualifies. Returns 1 when taken, 0 to leave it to Lua. */
int cpx_lane_try(struct cpx_worker_s *w, cpx_request_t *r);
/* The relay's request records: a worker's list is handed to its current
 * generation's app.lane_records after the loop iteration that finished
 * them. init/close: with the worker's Lua glue. */
void cpx_lane_records_init(struct cpx_worker_s *w);
void cpx_lane_records_close(struct cpx_worker_s *w);

#endif /* CPX_LANE_LUA_H */
