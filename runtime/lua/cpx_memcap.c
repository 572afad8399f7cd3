/* cpx_memcap.c: the memory cap of a Lua VM. See cpx_memcap.h. */
#include "cpx_memcap.h"

#include <luajit.h>

int cpx_memcap_admit(const cpx_memcap_t *c, size_t osize, size_t nsize) {
  size_t grow;

  if (nsize <= osize)
    return 1; /* frees and shrinks never fail */
  if (!c->limit || (c->host && *c->host > 0))
    return 1;
  grow = nsize - osize;
  if (c->used + grow <= c->limit)
    return 1;
  if (c->jit_off)
    return 0; /* the interpreter raises "not enough memory" cleanly */
  /* On a trace a refusal would crash (see the header): grant up to the
   * soft ceiling; the next safe point switches the JIT off. */
  return c->used + grow <= c->limit + c->limit / 2;
}

static void *cap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  cpx_memcap_t *c = ud;
  size_t old = ptr ? osize : 0;
  void *np;

  if (nsize == 0) {
    if (ptr)
      c->used -= osize;
    return c->base_alloc(c->base_ud, ptr, osize, 0);
  }
  if (!cpx_memcap_admit(c, old, nsize)) {
    c->refused++;
    return NULL; /* LuaJIT raises "not enough memory" */
  }
  np = c->base_alloc(c->base_ud, ptr, osize, nsize);
  if (!np)
    return NULL;
  c->used = c->used - old + nsize;
  if (c->used > c->peak)
    c->peak = c->used;
  if (c->limit && c->used > c->limit && !c->jit_off)
    c->over = 1;
  return np;
}

void cpx_memcap_attach(cpx_memcap_t *c, lua_State *L, size_t limit,
                       const int *host) {
  c->base_alloc = lua_getallocf(L, &c->base_ud);
  /* What the state holds already was allocated uncounted: start from the
   * collector's total so frees never take `used` below zero. */
  c->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
            (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
  c->peak = c->used;
  c->limit = limit;
  c->host = host;
  c->jit_off = 0;
  c->over = 0;
  c->refused = c->refused_seen = 0;
  lua_setallocf(L, cap_alloc, c);
}

void cpx_memcap_detach(cpx_memcap_t *c, lua_State *L) {
  lua_setallocf(L, c->base_alloc, c->base_ud);
}

int cpx_memcap_safepoint(cpx_memcap_t *c, lua_State *L) {
  int ev = 0;

  if (!c->limit)
    return 0;
  if (c->refused != c->refused_seen) {
    c->refused_seen = c->refused;
    ev |= CPX_MEMCAP_REFUSED;
  }
  if (!c->jit_off && (c->over || c->used >= c->limit - c->limit / 4)) {
    /* Off first (no new recording), then drop every trace: JIT-compiled
     * code must not be what meets the limit. */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
    c->jit_off = 1;
    c->over = 0;
    ev |= CPX_MEMCAP_JIT_OFF;
  } else if (c->jit_off && c->used < c->limit / 2) {
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
    c->jit_off = 0;
    ev |= CPX_MEMCAP_JIT_ON;
  }
  return ev;
}
