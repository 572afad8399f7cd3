/* cpx_module.c: `require("cpx")` for plain LuaJIT (the busted specs).
 * Returns the same non-yielding API table the server exposes. */
#include <lua.h>

#include "cpx_lua_util.h"

int luaopen_cpx(lua_State *L) {
  return cpx_lua_util_open(L);
}
