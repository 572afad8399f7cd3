/* cpx_bindings.h: every binding file's entry point, in one place.
 *
 * The layering rule (docs/architecture.md): core/, net/ and state/ expose
 * plain C APIs and never include lua.h; each area's Lua binding lives in
 * runtime/lua/cpx_<area>_lua.c and is registered from here. One shape for
 * all of them:
 *
 *   void cpx_<area>_lua_register(lua_State *L);
 *
 * adds the area's functions to the `cpx` table at the top of the stack
 * (a sub-table such as cpx.yaml, or fields of an existing one such as
 * cpx.json) and leaves the stack as it found it. cpx_lua.c (the server's
 * VMs) and lua_module/cpx_module.c (busted's require("cpx")) call them;
 * the request-bound ones (fetch, req, timers, ...) are cpx_co.c's.
 */
#ifndef CPX_BINDINGS_H
#define CPX_BINDINGS_H

#include <lauxlib.h>
#include <lua.h>

/* Sets cpx[name] to a new table holding fns (the cpx table at the top of
 * the stack): the one way a binding file registers its table. */
static inline void cpx_lua_register_table(lua_State *L, const char *name,
                                          const luaL_Reg *fns) {
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_setfield(L, -2, name);
}

/* cpx_access_lua.c: cpx.client_key */
void cpx_access_lua_register(lua_State *L);
/* cpx_json_scan_lua.c: cpx.json.peek, has, set_string, top, edit, member,
 * first_event (into the cpx.json table cpx_lua_util_open made) */
void cpx_json_scan_lua_register(lua_State *L);
/* cpx_http_lua.c: cpx.http */
void cpx_http_lua_register(lua_State *L);
/* cpx_tokens_lua.c: cpx.tokens.count (count_async: cpx_co.c) */
void cpx_tokens_lua_register(lua_State *L);
/* cpx_yaml_lua.c: cpx.yaml = { decode, spans } */
void cpx_yaml_lua_register(lua_State *L);
/* cpx_pool_lua.c: cpx.pool */
void cpx_pool_lua_register(lua_State *L);
/* cpx_store_lua.c: cpx.store; the async pair (write_async, rescan_async)
 * only in the server's VMs, added to cpx.store once it exists (busted's
 * module leaves them out, and rt.refresh falls back to write / rescan) */
void cpx_store_lua_register(lua_State *L);
void cpx_store_async_lua_register(lua_State *L);
/* cpx_mgmt_lua.c: cpx.mgmt */
void cpx_mgmt_lua_register(lua_State *L);
/* cpx_usage_lua.c: cpx.usage */
void cpx_usage_lua_register(lua_State *L);
/* cpx_reqlog_lua.c: cpx.reqlog */
void cpx_reqlog_lua_register(lua_State *L);
/* cpx_metrics_lua.c: cpx.metrics */
void cpx_metrics_lua_register(lua_State *L);
/* cpx_otlp_lua.c: cpx.otlp */
void cpx_otlp_lua_register(lua_State *L);
/* cpx_lane_lua.c: cpx.lane */
void cpx_lane_lua_register(lua_State *L);
/* cpx_panel.c: cpx.panel */
void cpx_panel_lua_register(lua_State *L);
/* cpx_redirect_lua.c: cpx.redirect */
void cpx_redirect_lua_register(lua_State *L);
/* cpx_sign_lua.c: cpx.rsa_sha256_sign */
void cpx_sign_lua_register(lua_State *L);

#endif /* CPX_BINDINGS_H */
