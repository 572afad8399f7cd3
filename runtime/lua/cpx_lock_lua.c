/* cpx_lock_lua.c: `cpx.lock`, the Lua face of cpx_lock.h.
 *
 *   cpx.lock(name[, {file = path, timeout = seconds (30), step = seconds
 *            (0.025)}]) -> lock | nil, "timeout" | nil, err
 *   lock:release() -> true | nil, "not held"
 *
 * Only a runtime coroutine (a request's handler or a task) takes a lock:
 * it owns it, and a lock is released by lock:release(), when its
 * coroutine ends (returns or fails), or when its request is aborted, so
 * no path leaks one. Waiting polls every `step` (attempts never block the
 * loop) and yields in between.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_lock.h"
#include "cpx_task.h"

#define MT_LOCK "cpx.lock"

typedef struct held_s held_t;

typedef struct {
  held_t *h; /* NULL once released */
} lock_box_t;

/* One held lock; owned by its coroutine's list until released. */
struct held_s {
  cpx_lock_t *lk;
  cpx_co_t *owner;
  held_t *next;
  lock_box_t *box; /* the Lua handle, NULL once collected */
};

/* A coroutine waiting in cpx.lock; freed by the poll that ends the wait or
 * by the cleanup when the wait is cut short. */
typedef struct {
  cpx_co_t *co;
  uint64_t deadline; /* loop time, ms */
  char *file;        /* owned, or NULL */
  char name[CPX_LOCK_MAX_NAME];
} lock_wait_t;

static void release_held(held_t *h) {
  held_t **pp = (held_t **)cpx__co_locks(h->owner);
  while (*pp && *pp != h)
    pp = &(*pp)->next;
  if (*pp)
    *pp = h->next;
  if (h->box)
    h->box->h = NULL;
  cpx_lock_release(h->lk);
  free(h);
}

void cpx__co_release_locks(cpx_co_t *co) {
  held_t **head = (held_t **)cpx__co_locks(co);
  while (*head)
    release_held(*head);
}

/* Pushes the handle of a lock co now holds. Returns 1, or 2 (nil, err)
 * when out of memory (the lock is released again). */
static int push_held(lua_State *L, cpx_co_t *co, cpx_lock_t *lk) {
  held_t *h = calloc(1, sizeof(*h));
  held_t **head = (held_t **)cpx__co_locks(co);
  if (!h) {
    cpx_lock_release(lk);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  h->lk = lk;
  h->owner = co;
  h->next = *head;
  *head = h;
  h->box = lua_newuserdata(L, sizeof(lock_box_t));
  h->box->h = h;
  luaL_getmetatable(L, MT_LOCK);
  lua_setmetatable(L, -2);
  return 1;
}

static int push_error(lua_State *L, int rc) {
  lua_pushnil(L);
  if (rc == CPX_ELIMIT)
    lua_pushliteral(L, "lock name too long or too many locks held");
  else
    lua_pushstring(L, cpx_strerror(rc));
  return 2;
}

static void wait_free(void *ud) {
  lock_wait_t *lw = ud;
  free(lw->file);
  free(lw);
}

static int wait_poll(lua_State *co_L, void *ud) {
  lock_wait_t *lw = ud;
  cpx_lock_t *lk;
  int rc = cpx_lock_try(lw->name, lw->file, &lk), n;
  if (rc == CPX_EAGAIN) {
    if (uv_now(cpx__co_loop(lw->co)) < lw->deadline)
      return 0;
    lua_pushnil(co_L);
    lua_pushliteral(co_L, "timeout");
    n = 2;
  } else if (rc != 0) {
    n = push_error(co_L, rc);
  } else {
    n = push_held(co_L, lw->co, lk);
  }
  wait_free(lw);
  return n;
}

static double opt_field(lua_State *L, int idx, const char *k, double dflt) {
  double v = dflt;
  if (!lua_istable(L, idx))
    return dflt;
  lua_getfield(L, idx, k);
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1))
      luaL_error(L, "cpx.lock: opts.%s must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

static int l_lock(lua_State *L) {
  cpx_co_t *co = cpx__co_current(L);
  const char *name = luaL_checkstring(L, 1);
  const char *file = NULL, *why;
  double timeout, step;
  cpx_lock_t *lk;
  lock_wait_t *lw;
  int rc;

  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TTABLE);
  if (!co)
    return luaL_error(L,
                      "cpx.lock can only run in a request's handler or a task");
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "file");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "cpx.lock: opts.file must be a string");
    file = lua_tostring(L, -1); /* stays referenced by opts */
    lua_pop(L, 1);
  }
  timeout = opt_field(L, 2, "timeout", 30);
  step = opt_field(L, 2, "step", 0.025);
  if (timeout < 0 || timeout != timeout)
    return luaL_error(L, "cpx.lock: opts.timeout must be >= 0");
  if (step < 0.001)
    step = 0.001;
  rc = cpx_lock_try(name, file, &lk);
  if (rc == 0)
    return push_held(L, co, lk);
  if (rc != CPX_EAGAIN)
    return push_error(L, rc);
  if (timeout == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  if ((why = cpx__co_refusal(L, co)) != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lw = calloc(1, sizeof(*lw));
  if (!lw || (file && !(lw->file = strdup(file)))) {
    free(lw);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  memcpy(lw->name, name, strlen(name) + 1); /* < CPX_LOCK_MAX_NAME: tried */
  lw->co = co;
  lw->deadline = uv_now(cpx__co_loop(co)) + (uint64_t)(timeout * 1000);
  return cpx__co_wait_poll(L, co, (uint64_t)(step * 1000), wait_poll, wait_free,
                           lw);
}

static int l_lock_release(lua_State *L) {
  lock_box_t *b = luaL_checkudata(L, 1, MT_LOCK);
  if (!b->h) {
    lua_pushnil(L);
    lua_pushliteral(L, "not held");
    return 2;
  }
  release_held(b->h);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_lock_held(lua_State *L) {
  lock_box_t *b = luaL_checkudata(L, 1, MT_LOCK);
  lua_pushboolean(L, b->h != NULL);
  return 1;
}

/* The handle went away; the lock stays with its coroutine (released at
 * its end), so dropping the handle never frees a lock early. */
static int l_lock_gc(lua_State *L) {
  lock_box_t *b = luaL_checkudata(L, 1, MT_LOCK);
  if (b->h)
    b->h->box = NULL;
  return 0;
}

void cpx__lock_lua_register(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"release", l_lock_release}, {"held", l_lock_held}, {NULL, NULL}};
  luaL_newmetatable(L, MT_LOCK);
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_lock_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_lock);
  lua_setfield(L, -2, "lock");
}
