/* cpx_otlp_lua.c: cpx.otlp over runtime/state/cpx_otlp.c.
 *
 *   cpx.otlp.open(endpoint[, service]) -> true | nil, err
 *   cpx.otlp.push(span_json) -> true | false (queue full, or not open)
 *   cpx.otlp.stats() -> { sent, dropped, failed, queued }
 */
#include <lauxlib.h>
#include <lua.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_otlp.h"

/* A second open changes the endpoint and service of the running sender. */
static int l_open(lua_State *L) {
  const char *ep = luaL_checkstring(L, 1);
  const char *svc = luaL_optstring(L, 2, "cliproxy");
  /* Only the server sends spans (not `cliproxy check`, doctor, busted). */
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  if (lua_touserdata(L, -1) == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "not a server worker");
    return 2;
  }
  lua_pop(L, 1);
  if (cpx_otlp_open(ep, svc) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "cannot start the OTLP sender thread");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_push(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int rc = cpx_otlp_push(s, n);
  if (rc < 0)
    return luaL_error(L, "out of memory");
  lua_pushboolean(L, rc);
  return 1;
}

static int l_stats(lua_State *L) {
  cpx_otlp_stats_t st;
  cpx_otlp_stats(&st);
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, (lua_Number)st.sent);
  lua_setfield(L, -2, "sent");
  lua_pushnumber(L, (lua_Number)st.dropped);
  lua_setfield(L, -2, "dropped");
  lua_pushnumber(L, (lua_Number)st.failed);
  lua_setfield(L, -2, "failed");
  lua_pushnumber(L, (lua_Number)st.queued);
  lua_setfield(L, -2, "queued");
  return 1;
}

void cpx_otlp_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"open", l_open}, {"push", l_push}, {"stats", l_stats}, {NULL, NULL}};
  cpx_lua_register_table(L, "otlp", fns);
}
