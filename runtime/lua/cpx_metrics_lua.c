/* cpx_metrics_lua.c: cpx.metrics over runtime/state/cpx_metrics.c.
 *
 *   cpx.metrics.observe(rec)   one finished request (rt.metrics subscribes
 *                              to rt.record); never yields
 *   cpx.metrics.render()       -> the Prometheus text of the C-side families
 *   cpx.metrics.reset()        tests only
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_lane.h"
#include "cpx_metrics.h"

static const char *field(lua_State *L, int t, const char *k, char *buf,
                         size_t cap) {
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
    snprintf(buf, cap, "%s", lua_tostring(L, -1));
  else
    buf[0] = '\0';
  lua_pop(L, 1);
  return buf;
}

static double numfield(lua_State *L, int t, const char *k, int *has) {
  double v = 0;
  lua_getfield(L, t, k);
  *has = lua_type(L, -1) == LUA_TNUMBER;
  if (*has)
    v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* cpx.metrics.observe(rec): one finished request. Never yields. */
static int l_observe(lua_State *L) {
  char endpoint[256], status[16], provider[64], model[256], path[16];
  static const char *const kinds[CPX_METRICS_TOKEN_KINDS] = {
      "input", "output", "reasoning", "cache_read", "cache_write"};
  cpx_metrics_rec_t r;
  int has;

  luaL_checktype(L, 1, LUA_TTABLE);
  field(L, 1, "endpoint", endpoint, sizeof(endpoint));
  field(L, 1, "status", status, sizeof(status));
  field(L, 1, "provider", provider, sizeof(provider));
  field(L, 1, "model", model, sizeof(model));
  field(L, 1, "path", path, sizeof(path));
  memset(&r, 0, sizeof(r));
  r.endpoint = endpoint;
  r.status = status;
  r.provider = provider;
  r.model = model;
  r.path = path;
  r.latency_ms = numfield(L, 1, "latency_ms", &r.has_latency);
  r.ttft_ms = numfield(L, 1, "ttft_ms", &r.has_ttft);
  lua_getfield(L, 1, "usage");
  if (lua_istable(L, -1)) {
    int u = lua_gettop(L);
    for (int i = 0; i < CPX_METRICS_TOKEN_KINDS; i++)
      r.tokens[i] = numfield(L, u, kinds[i], &has);
  }
  lua_pop(L, 1);
  cpx_metrics_observe(&r);
  return 0;
}

/* cpx.metrics.render() -> text: every C-side family. */
static int l_render(lua_State *L) {
  size_t n = 0;
  char *b = cpx_metrics_render(cpx_lane_records_dropped(), &n);
  lua_pushlstring(L, b ? b : "", n);
  free(b);
  return 1;
}

/* cpx.metrics.reset(): tests only. */
static int l_reset(lua_State *L) {
  CPX_UNUSED(L);
  cpx_metrics_reset();
  return 0;
}

void cpx_metrics_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"observe", l_observe},
                                 {"render", l_render},
                                 {"reset", l_reset},
                                 {NULL, NULL}};
  cpx_metrics_start();
  cpx_lua_register_table(L, "metrics", fns);
}
