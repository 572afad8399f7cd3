/* cpx_count_lua.c: cpx.tokens.count_async, token counting in libuv's
 * threadpool while the calling coroutine waits.
 */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_lua_int.h"
#include "cpx_tokens.h"

/* Counting a large body takes milliseconds; on the loop it would stall
 * every other request of the worker, so the request phase counts in libuv's
 * threadpool. The text stays anchored in the registry while a thread reads
 * it (Lua strings never move). */
typedef struct {
  uv_work_t req;
  lreq_t *lr;
  const char *text;
  size_t len;
  int ref;
  char enc[32];
  size_t count;
  int rc;
} count_work_t;

static void count_work(uv_work_t *req) {
  count_work_t *w = cpx_container_of(req, count_work_t, req);
  w->rc = cpx_tokens_count(w->enc, w->text, w->len, &w->count);
}

static void count_done(uv_work_t *req, int status) {
  count_work_t *w = cpx_container_of(req, count_work_t, req);
  lreq_t *lr = w->lr;
  cpx_vm_t *vm = lr->vm;

  vm->host++;
  luaL_unref(vm->L, LUA_REGISTRYINDEX, w->ref);
  vm->host--;
  lr->pending_work--;
  if (!lr->released && lr->wait == W_WORK && !lr->running) {
    int nres = 1;
    lr->wait = W_NONE;
    vm->host++;
    if (status == 0 && w->rc == 0) {
      lua_pushnumber(lr->co, (lua_Number)w->count);
    } else {
      lua_pushnil(lr->co);
      lua_pushstring(lr->co,
                     status ? uv_strerror(status) : cpx_strerror(w->rc));
      nres = 2;
    }
    vm->host--;
    free(w);
    cpx__lreq_resume(lr, nres);
    return;
  }
  free(w);
  cpx__lreq_maybe_release(lr);
}

/* cpx.tokens.count_async(text[, encoding]) -> n | nil, err. Yields in the
 * request phase (elsewhere it counts synchronously). */
static int l_count_async(lua_State *L) {
  lreq_t *lr = cpx__lreq_of(L);
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *enc = luaL_optstring(L, 2, "o200k_base");
  count_work_t *w;

  /* Outside a coroutine, or in one that may no longer wait (a premature
   * task): count here and now. */
  if (!lr || lr->co != L || lr->released || lr->refuse || lr->aborted) {
    size_t n;
    int rc = cpx_tokens_count(enc, text, len, &n);
    if (rc != 0) {
      lua_pushnil(L);
      lua_pushstring(L, cpx_strerror(rc));
      return 2;
    }
    lua_pushnumber(L, (lua_Number)n);
    return 1;
  }
  w = calloc(1, sizeof(*w));
  if (!w)
    return luaL_error(L, "out of memory");
  w->lr = lr;
  w->text = text;
  w->len = len;
  snprintf(w->enc, sizeof(w->enc), "%s", enc);
  lua_pushvalue(L, 1);
  w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (uv_queue_work(lr->w->loop, &w->req, count_work, count_done) != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
    free(w);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot queue the count");
    return 2;
  }
  lr->pending_work++;
  lr->wait = W_WORK;
  return lua_yield(L, 0);
}

void cpx__count_lua_register(lua_State *L, int t) {
  lua_getfield(L, t, "tokens");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, l_count_async);
    lua_setfield(L, -2, "count_async");
  }
  lua_pop(L, 1);
}
