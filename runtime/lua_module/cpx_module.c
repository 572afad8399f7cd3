/* cpx_module.c: `require("cpx")` for plain LuaJIT (the busted specs).
 * Returns the same non-yielding API table the server exposes. */
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_lua_util.h"

int luaopen_cpx(lua_State *L) {
  int n = cpx_lua_util_open(L);
  cpx_json_scan_lua_register(L);
  cpx_access_lua_register(L);
  cpx_http_lua_register(L);
  cpx_tokens_lua_register(L);
  cpx_pool_lua_register(L);
  cpx_store_lua_register(L);
  cpx_yaml_lua_register(L);
  cpx_mgmt_lua_register(L);
  cpx_reqlog_lua_register(L);
  cpx_usage_lua_register(L);
  cpx_metrics_lua_register(L);
  cpx_otlp_lua_register(L);
  return n;
}
