/* cpx_access_lua.c: cpx.client_key(authorization, x_goog_api_key,
 * x_api_key) -> key, where | nil: the rule of cpx_access.c for rt.access. */
#include <lauxlib.h>
#include <lua.h>

#include "cpx_access.h"
#include "cpx_bindings.h"

static const char *const where[] = {NULL, "authorization", "x-goog-api-key",
                                    "x-api-key"};

static int l_client_key(lua_State *L) {
  size_t an = 0, gn = 0, xn = 0, kn;
  const char *a = lua_isstring(L, 1) ? lua_tolstring(L, 1, &an) : NULL;
  const char *g = lua_isstring(L, 2) ? lua_tolstring(L, 2, &gn) : NULL;
  const char *x = lua_isstring(L, 3) ? lua_tolstring(L, 3, &xn) : NULL;
  const char *k;
  int w = cpx_client_key(a, an, g, gn, x, xn, &k, &kn);
  if (w == CPX_KEY_NONE) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, k, kn);
  lua_pushstring(L, where[w]);
  return 2;
}

void cpx_access_lua_register(lua_State *L) {
  lua_pushcfunction(L, l_client_key);
  lua_setfield(L, -2, "client_key");
}
