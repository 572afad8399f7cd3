/* cpx_module.c: `require("cpx")` for plain LuaJIT (the busted specs).
 * Returns the same non-yielding API table the server exposes. */
#include <lua.h>

#include "cpx_access.h"
#include "cpx_lane_lua.h"
#include "cpx_lua_util.h"
#include "cpx_mgmt.h"
#include "cpx_reqlog.h"
#include "cpx_pool.h"
#include "cpx_tokens.h"
#include "cpx_yaml.h"
#include "cpx_metrics.h"
#include "cpx_otlp.h"
#include "cpx_usage.h"

int luaopen_cpx(lua_State *L) {
  int n = cpx_lua_util_open(L);
  cpx_json_scan_register(L);
  cpx_access_lua_register(L);
  cpx_http_lua_register(L);
  cpx_tokens_lua_register(L);
  cpx_pool_lua_register(L);
  cpx_yaml_lua_register(L);
  cpx_mgmt_lua_register(L);
  cpx_reqlog_lua_register(L);
  cpx_usage_lua_register(L);
  cpx_metrics_lua_register(L);
  cpx_otlp_lua_register(L);
  cpx_record_usage_register(L);
  return n;
}
