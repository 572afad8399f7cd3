/* cpx_misc_lua.c: cpx.log, cpx.log_level, cpx.secure_compare,
 * cpx.generation, cpx.worker_id, cpx.access_log and cpx.traceback.
 */
#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "cpx_access.h"
#include "cpx_log.h"
#include "cpx_lua_int.h"

static int l_log(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  int level = cpx_log_level_from_name(lvl);
  const char *rid = NULL;
  lreq_t *lr;
  int n = lua_gettop(L);
  if (level < 0)
    return luaL_argerror(L, 1, "level must be debug, info, warn or error");
  if (level < cpx_log_get_level())
    return 0;
  lr = cpx__co_current(L);
  if (lr && lr->r)
    rid = lr->r->rid;
  for (int i = 2; i <= n; i++) {
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, i);
    lua_call(L, 1, 1);
    if (i > 2) {
      lua_pushliteral(L, " ");
      lua_insert(L, -2);
    }
  }
  lua_concat(L, n > 1 ? 2 * (n - 1) - 1 : 0);
  if (n <= 1)
    lua_pushliteral(L, "");
  cpx_log(level, rid, "%s", lua_tostring(L, -1));
  return 0;
}

/* cpx.secure_compare(a, b): cpx_secure_equal (runtime/core/cpx_access.c,
 * which the C relay's key check uses too). */
static int l_secure_compare(lua_State *L) {
  size_t na, nb;
  const char *a = luaL_checklstring(L, 1, &na);
  const char *b = luaL_checklstring(L, 2, &nb);
  if (!cpx_secure_ready())
    return luaL_error(L, "no randomness");
  lua_pushboolean(L, cpx_secure_equal(a, na, b, nb));
  return 1;
}

static int l_log_level(lua_State *L) {
  if (lua_isstring(L, 1)) {
    int level = cpx_log_level_from_name(lua_tostring(L, 1));
    if (level < 0)
      return luaL_argerror(L, 1, "unknown level");
    cpx_log_set_level(level);
  }
  lua_pushstring(L, cpx_log_level_name(cpx_log_get_level()));
  return 1;
}

static int l_generation(lua_State *L) {
  cpx_vm_t *vm;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  vm = lua_touserdata(L, -1);
  lua_pushinteger(L, vm ? (lua_Integer)vm->gen : 0);
  return 1;
}

/* cpx.access_log(request_id) -> boolean: rt.access_log's record
 * subscriber names the request whose record was emitted; its access line
 * is written now, or when its response ends (cpx_access_log.h). false when the
 * id is not waiting for its record (already written, another worker's, or
 * outside a worker). */
static int l_access_log(lua_State *L) {
  size_t n;
  const char *rid = luaL_checklstring(L, 1, &n);
  cpx_worker_t *w;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_pushboolean(L, w && w->loop && cpx_access_log_record(&w->server, rid, n));
  return 1;
}

static int l_worker_id(lua_State *L) {
  cpx_worker_t *w;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pushinteger(L, w ? w->id : 0);
  return 1;
}

void cpx__misc_lua_register(lua_State *L, int t) {
  lua_pushcfunction(L, l_log);
  lua_setfield(L, t, "log");
  lua_pushcfunction(L, l_log_level);
  lua_setfield(L, t, "log_level");
  lua_pushcfunction(L, l_secure_compare);
  lua_setfield(L, t, "secure_compare");
  lua_pushcfunction(L, l_generation);
  lua_setfield(L, t, "generation");
  lua_pushcfunction(L, l_worker_id);
  lua_setfield(L, t, "worker_id");
  lua_pushcfunction(L, l_access_log);
  lua_setfield(L, t, "access_log");
  /* debug itself stays out of the sandbox; its traceback is harmless. */
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_setfield(L, t, "traceback");
  lua_pop(L, 1);
}
