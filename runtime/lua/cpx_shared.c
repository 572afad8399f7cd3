/* cpx_shared.c: `cpx.shared`, a small process-wide table of strings that
 * every worker's VM reads and writes (one mutex). It holds what one worker
 * decides and the others must see: the refresh engine's per-account state
 * (rt.refresh) is kept here by worker 0's scheduler and by whichever
 * worker refreshed on demand.
 *
 *   cpx.shared.set(key, value | nil) -> true | nil, err
 *   cpx.shared.get(key) -> value | nil
 *   cpx.shared.keys([prefix]) -> { key, ... } (sorted)
 *
 * Values are copied in and out (no Lua value is kept), so VM generations
 * come and go while the table lives on. Bounded: CPX_SHARED_MAX_KEYS keys
 * of at most 256 bytes, values of at most 64 KiB.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_bindings.h"

#define CPX_SHARED_MAX_KEYS 4096
#define CPX_SHARED_MAX_KEY 256
#define CPX_SHARED_MAX_VALUE (64u * 1024)

/* Owned by the table; freed when replaced or removed. */
typedef struct entry_s {
  struct entry_s *next;
  char *value;
  size_t len;
  char key[];
} entry_t;

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t mu;
static entry_t *entries; /* guarded by mu */
static int nentries;

static void init_once(void) {
  if (uv_mutex_init(&mu) != 0)
    abort();
}

static entry_t **find(const char *key) {
  entry_t **pp = &entries;
  while (*pp && strcmp((*pp)->key, key) != 0)
    pp = &(*pp)->next;
  return pp;
}

static int l_set(lua_State *L) {
  size_t klen, vlen = 0;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *val =
      lua_isnoneornil(L, 2) ? NULL : luaL_checklstring(L, 2, &vlen);
  char *copy = NULL;
  entry_t **pp, *e;

  if (klen == 0 || klen >= CPX_SHARED_MAX_KEY || strlen(key) != klen)
    return luaL_argerror(L, 1, "key must be 1-255 bytes without NUL");
  if (val && vlen > CPX_SHARED_MAX_VALUE) {
    lua_pushnil(L);
    lua_pushliteral(L, "value too large (64 KiB at most)");
    return 2;
  }
  if (val && !(copy = malloc(vlen + 1))) {
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  if (copy) {
    memcpy(copy, val, vlen);
    copy[vlen] = '\0';
  }
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  pp = find(key);
  if (!val) {
    if ((e = *pp) != NULL) {
      *pp = e->next;
      nentries--;
      free(e->value);
      free(e);
    }
  } else if ((e = *pp) != NULL) {
    free(e->value);
    e->value = copy;
    e->len = vlen;
  } else if (nentries >= CPX_SHARED_MAX_KEYS ||
             !(e = malloc(sizeof(*e) + klen + 1))) {
    uv_mutex_unlock(&mu);
    free(copy);
    lua_pushnil(L);
    lua_pushliteral(L, "cpx.shared is full");
    return 2;
  } else {
    memcpy(e->key, key, klen + 1);
    e->value = copy;
    e->len = vlen;
    e->next = entries;
    entries = e;
    nentries++;
  }
  uv_mutex_unlock(&mu);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_get(lua_State *L) {
  const char *key = luaL_checkstring(L, 1);
  entry_t *e;
  char *copy = NULL;
  size_t len = 0;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  e = *find(key);
  if (e && (copy = malloc(e->len + 1)) != NULL) {
    memcpy(copy, e->value, e->len);
    len = e->len;
  }
  uv_mutex_unlock(&mu);
  /* Pushed outside the mutex: a Lua allocation error must not leave it
   * locked. */
  if (e && !copy)
    return luaL_error(L, "out of memory");
  if (!copy) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, copy, len);
  free(copy);
  return 1;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int l_keys(lua_State *L) {
  size_t plen = 0;
  const char *prefix = luaL_optlstring(L, 1, "", &plen);
  char **keys;
  int n = 0;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  keys = malloc(sizeof(char *) * (size_t)(nentries ? nentries : 1));
  for (entry_t *e = entries; keys && e; e = e->next)
    if (strncmp(e->key, prefix, plen) == 0 && (keys[n] = strdup(e->key)))
      n++;
  uv_mutex_unlock(&mu);
  if (!keys)
    return luaL_error(L, "out of memory");
  qsort(keys, (size_t)n, sizeof(char *), cmp_str);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, keys[i]);
    lua_rawseti(L, -2, i + 1);
    free(keys[i]);
  }
  free(keys);
  return 1;
}

void cpx__shared_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"set", l_set}, {"get", l_get}, {"keys", l_keys}, {NULL, NULL}};
  cpx_lua_register_table(L, "shared", fns);
}
