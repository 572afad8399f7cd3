/* cpx_pool_lua.c: `cpx.pool`, the Lua view of the process-wide account
 * pool (cpx.store: cpx_store_lua.c). Nothing here yields and
 * nothing keeps Lua values: every call copies in and out, so a VM
 * generation can come and go while the C state lives on.
 *
 *   cpx.pool.configure{strategy=, disable_cooling=, affinity_ttl=<s>}
 *   cpx.pool.account{id=, provider=, priority=, weight=, disabled=,
 *                    disable_cooling=} -> index
 *   cpx.pool.group(name, {{account=, model=}, ...}) -> true | nil, err
 *   cpx.pool.pick(name[, exclude][, affinity_key])
 *       -> member (1-based), handle, probe, by_affinity
 *        | nil, wait_seconds, "cooling" | "none"
 *       exclude: array of 1-based members already tried
 *   cpx.pool.report(handle, "ok"|"quota"|"auth"|"not_found"|"transient"|
 *                   "neutral"[, hint_seconds]) -> cooldown seconds
 *   cpx.pool.wait(name) -> seconds until a member reopens (0: one is open)
 *   cpx.pool.state(account, model) -> {remaining, level, reason, quota,
 *                                      probing, inflight} | nil
 *   cpx.pool.clear([account]) -> states reopened
 *   cpx.pool.reset(); cpx.pool.fake_clock(ms | nil)   (tests)
 */
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_pool.h"

#define MAX_EXCLUDE 256

static const char *const strategies[] = {"round-robin", "fill-first",
                                         "weighted-round-robin", NULL};
static const char *const results[] = {
    "ok", "quota", "auth", "not_found", "transient", "neutral", NULL};

static cpx_pool_t *pool(lua_State *L) {
  cpx_pool_t *p = cpx_pool_global();
  if (!p)
    luaL_error(L, "cpx.pool: out of memory");
  return p;
}

static int opt_field_int(lua_State *L, int t, const char *k, int dflt) {
  int v;
  lua_getfield(L, t, k);
  v = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static int opt_field_bool(lua_State *L, int t, const char *k) {
  int v;
  lua_getfield(L, t, k);
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int l_configure(lua_State *L) {
  int strategy = CPX_POOL_ROUND_ROBIN;
  double ttl;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "strategy");
  if (lua_isstring(L, -1))
    strategy = luaL_checkoption(L, -1, "round-robin", strategies);
  lua_pop(L, 1);
  lua_getfield(L, 1, "affinity_ttl");
  ttl = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  cpx_pool_configure(pool(L), strategy, opt_field_bool(L, 1, "disable_cooling"),
                     ttl > 0 ? (uint64_t)(ttl * 1000) : 0);
  return 0;
}

static int l_account(lua_State *L) {
  cpx_pool_account_t a;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "id");
  a.id = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "provider");
  a.provider = lua_tostring(L, -1);
  a.priority = opt_field_int(L, 1, "priority", 0);
  a.weight = opt_field_int(L, 1, "weight", 1);
  a.disabled = opt_field_bool(L, 1, "disabled");
  a.disable_cooling = opt_field_bool(L, 1, "disable_cooling");
  rc = cpx_pool_account(pool(L), &a);
  if (rc < 0)
    return luaL_error(L, "cpx.pool.account: %s", cpx_strerror(rc));
  lua_pushinteger(L, rc);
  return 1;
}

static int l_group(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  size_t n;
  cpx_pool_member_t *m;
  int rc;
  luaL_checktype(L, 2, LUA_TTABLE);
  n = lua_objlen(L, 2);
  m = calloc(n ? n : 1, sizeof(*m));
  if (!m)
    return luaL_error(L, "out of memory");
  /* The strings stay referenced by the member tables of argument 2. */
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 2, (int)i + 1);
    if (!lua_istable(L, -1)) {
      free(m);
      return luaL_error(L, "cpx.pool.group: member %d is not a table",
                        (int)i + 1);
    }
    lua_getfield(L, -1, "account");
    m[i].account = lua_tostring(L, -1);
    lua_getfield(L, -2, "model");
    m[i].model = lua_tostring(L, -1);
    lua_pop(L, 3);
  }
  rc = cpx_pool_set_group(pool(L), name, m, n);
  free(m);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, rc == CPX_EINVAL ? "unknown account or missing model"
                                       : cpx_strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_pick(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  uint32_t ex[MAX_EXCLUDE];
  cpx_pool_pick_t req = {ex, 0, NULL, 0, -1};
  cpx_pool_choice_t c;
  uint64_t wait = 0;
  int rc;
  if (lua_istable(L, 2)) {
    size_t n = lua_objlen(L, 2);
    for (size_t i = 0; i < n && i < MAX_EXCLUDE; i++) {
      lua_rawgeti(L, 2, (int)i + 1);
      ex[req.nexclude++] = (uint32_t)(lua_tointeger(L, -1) - 1);
      lua_pop(L, 1);
    }
  }
  if (lua_isstring(L, 3))
    req.affinity_key = lua_tolstring(L, 3, &req.affinity_len);
  rc = cpx_pool_pick(pool(L), name, &req, &c, &wait);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushnumber(L, (double)wait / 1000.0);
    lua_pushstring(L, rc == CPX_EAGAIN ? "cooling" : "none");
    return 3;
  }
  lua_pushinteger(L, (lua_Integer)c.member + 1);
  lua_pushnumber(L, cpx_pool_handle(&c));
  lua_pushboolean(L, c.probe);
  lua_pushboolean(L, c.affinity);
  return 4;
}

static int l_report(lua_State *L) {
  double h = luaL_checknumber(L, 1);
  int result = luaL_checkoption(L, 2, NULL, results);
  double hint = luaL_optnumber(L, 3, 0);
  uint32_t state;
  int probe;
  uint64_t d;
  if (cpx_pool_handle_parse(h, &state, &probe) != 0)
    return luaL_argerror(L, 1, "invalid handle");
  d = cpx_pool_report(pool(L), state, probe, result,
                      hint > 0 ? (uint64_t)(hint * 1000 + 0.5) : 0);
  lua_pushnumber(L, (double)d / 1000.0);
  return 1;
}

/* cpx.pool.load_file(dir) -> n | nil, err: the cooldowns saved in dir,
 * once per process (a reload must not bring back what has cleared since). */
static int l_load_file(lua_State *L) {
  static int loaded;
  static pthread_mutex_t once_mu = PTHREAD_MUTEX_INITIALIZER;
  const char *dir = luaL_checkstring(L, 1);
  int rc, first;
  pthread_mutex_lock(&once_mu);
  first = !loaded;
  loaded = 1;
  pthread_mutex_unlock(&once_mu);
  if (!first) {
    lua_pushinteger(L, 0);
    return 1;
  }
  rc = cpx_pool_load_file(pool(L), dir);
  if (rc < 0) {
    lua_pushnil(L);
    lua_pushstring(L, cpx_strerror(rc));
    return 2;
  }
  lua_pushinteger(L, rc);
  return 1;
}

static int l_wait(lua_State *L) {
  lua_pushnumber(
      L, (double)cpx_pool_group_wait(pool(L), luaL_checkstring(L, 1)) / 1000.0);
  return 1;
}

static int l_state(lua_State *L) {
  cpx_pool_state_info_t si;
  if (cpx_pool_get_state(pool(L), luaL_checkstring(L, 1),
                         luaL_checkstring(L, 2), &si) != 0)
    return 0;
  lua_createtable(L, 0, 6);
  lua_pushnumber(L, (double)si.remaining_ms / 1000.0);
  lua_setfield(L, -2, "remaining");
  lua_pushinteger(L, si.level);
  lua_setfield(L, -2, "level");
  lua_pushstring(L, results[si.reason]);
  lua_setfield(L, -2, "reason");
  lua_pushboolean(L, si.quota);
  lua_setfield(L, -2, "quota");
  lua_pushboolean(L, si.probing);
  lua_setfield(L, -2, "probing");
  lua_pushinteger(L, si.inflight);
  lua_setfield(L, -2, "inflight");
  return 1;
}

static int l_clear(lua_State *L) {
  /* clear([account[, model]]): nil account with a model clears that model
   * on every account */
  lua_pushinteger(L, cpx_pool_clear_model(pool(L), luaL_optstring(L, 1, NULL),
                                          luaL_optstring(L, 2, NULL)));
  return 1;
}

static int l_reset(lua_State *L) {
  cpx_pool_reset(pool(L));
  cpx_pool_configure(pool(L), CPX_POOL_ROUND_ROBIN, 0, 0);
  return 0;
}

static uint64_t fake_ms;

static uint64_t fake_clock(void *ud) {
  CPX_UNUSED(ud);
  return __atomic_load_n(&fake_ms, __ATOMIC_RELAXED);
}

static int l_fake_clock(lua_State *L) {
  if (lua_isnumber(L, 1)) {
    __atomic_store_n(&fake_ms, (uint64_t)lua_tonumber(L, 1), __ATOMIC_RELAXED);
    cpx_pool_set_clock(pool(L), fake_clock, NULL);
  } else {
    cpx_pool_set_clock(pool(L), NULL, NULL);
  }
  return 0;
}

void cpx_pool_lua_register(lua_State *L) {
  static const luaL_Reg pool_fns[] = {
      {"configure", l_configure},   {"account", l_account},
      {"group", l_group},           {"pick", l_pick},
      {"report", l_report},         {"wait", l_wait},
      {"load_file", l_load_file},   {"state", l_state},
      {"clear", l_clear},           {"reset", l_reset},
      {"fake_clock", l_fake_clock}, {NULL, NULL}};
  cpx_lua_register_table(L, "pool", pool_fns);
}
