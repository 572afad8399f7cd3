/* cpx_store_lua.c: `cpx.store`, the Lua view of the process-wide
 * credential store (runtime/state/cpx_store.c).
 *
 *   cpx.store.open(dir) -> expanded dir | nil, err   (watches; idempotent)
 *   cpx.store.version() -> n (0 before open)
 *   cpx.store.list() -> {{name, type, text, disabled, mtime}, ...}
 *   cpx.store.write(name, text), cpx.store.remove(name) -> true | nil, err
 *   cpx.store.rescan() -> changed, cpx.store.dir() -> dir | nil
 *
 * and, in the server's VMs only (cpx_store_async_lua_register), the
 * blocking calls from a runtime coroutine done in libuv's threadpool
 * instead of on the worker's loop:
 *
 *   cpx.store.write_async(name, text) -> true | nil, err   (yields)
 *   cpx.store.rescan_async() -> changed                    (yields)
 *
 * A write is a temporary file, fsync, rename and a directory fsync, then a
 * rescan (cpx_store_write): milliseconds on a good disk, much more on a
 * busy one, during which the loop would serve nobody. Outside a runtime
 * coroutine, or in one that may no longer wait (its request went away, its
 * generation retired), the call runs here and now instead. A job whose
 * waiter went away still runs to its end: a refreshed token is written
 * even when nobody waits for it any more.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_store.h"
#include "cpx_task.h"

/* ---- cpx.store: synchronous --------------------------------------------- */

static int push_err(lua_State *L, int rc) {
  lua_pushnil(L);
  lua_pushstring(L, rc < 0 && rc > -4096 ? strerror(-rc) : cpx_strerror(rc));
  return 2;
}

static int l_store_open(lua_State *L) {
  cpx_store_t *s = cpx_store_global(luaL_checkstring(L, 1));
  if (!s) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot open auth-dir %s", lua_tostring(L, 1));
    return 2;
  }
  lua_pushstring(L, cpx_store_dir(s));
  return 1;
}

static int l_store_version(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  lua_pushnumber(L, s ? (double)cpx_store_version(s) : 0);
  return 1;
}

static int l_store_dir(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  if (!s)
    return 0;
  lua_pushstring(L, cpx_store_dir(s));
  return 1;
}

static int l_store_list(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  cpx_store_entry_t *e;
  size_t n;
  int rc;
  if (!s) {
    lua_newtable(L);
    return 1;
  }
  if ((rc = cpx_store_snapshot(s, &e, &n)) != 0)
    return push_err(L, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 5);
    lua_pushstring(L, e[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, e[i].type);
    lua_setfield(L, -2, "type");
    lua_pushlstring(L, e[i].text, e[i].len);
    lua_setfield(L, -2, "text");
    lua_pushboolean(L, e[i].disabled);
    lua_setfield(L, -2, "disabled");
    lua_pushnumber(L, (double)e[i].mtime);
    lua_setfield(L, -2, "mtime");
    lua_rawseti(L, -2, (int)i + 1);
  }
  cpx_store_snapshot_free(e, n);
  return 1;
}

static int l_store_write(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  size_t len;
  const char *name = luaL_checkstring(L, 1);
  const char *text = luaL_checklstring(L, 2, &len);
  int rc;
  if (!s)
    return push_err(L, CPX_ESTATE);
  if ((rc = cpx_store_write(s, name, text, len)) != 0)
    return push_err(L, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_store_remove(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  int rc;
  if (!s)
    return push_err(L, CPX_ESTATE);
  if ((rc = cpx_store_remove(s, luaL_checkstring(L, 1))) != 0)
    return push_err(L, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_store_rescan(lua_State *L) {
  cpx_store_t *s = cpx_store_current();
  lua_pushboolean(L, s && cpx_store_rescan(s) > 0);
  return 1;
}

void cpx_store_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"open", l_store_open},     {"version", l_store_version},
      {"list", l_store_list},     {"write", l_store_write},
      {"remove", l_store_remove}, {"rescan", l_store_rescan},
      {"dir", l_store_dir},       {NULL, NULL}};
  cpx_lua_register_table(L, "store", fns);
}

/* ---- cpx.store: in the threadpool ---------------------------------------- */

enum { JOB_WRITE, JOB_RESCAN };

/* Owned by the waiting coroutine's poll until the job finished; by the
 * after-work callback when the waiter went away first. */
typedef struct {
  uv_work_t req;
  cpx_store_t *s; /* global stores are never freed (cpx_store_global) */
  int op;
  char *name, *text; /* owned copies */
  size_t len;
  int rc;
  int finished;  /* the after-work callback ran (loop thread) */
  int abandoned; /* the waiter went away */
} store_job_t;

static void job_free(store_job_t *j) {
  free(j->name);
  free(j->text);
  free(j);
}

static void job_work(uv_work_t *req) {
  store_job_t *j = cpx_container_of(req, store_job_t, req);
  if (j->op == JOB_WRITE)
    j->rc = cpx_store_write(j->s, j->name, j->text, j->len);
  else
    j->rc = cpx_store_rescan(j->s);
}

static void job_after(uv_work_t *req, int status) {
  store_job_t *j = cpx_container_of(req, store_job_t, req);
  if (status != 0 && j->rc == 0)
    j->rc = CPX_EIO;
  j->finished = 1;
  if (j->abandoned)
    job_free(j);
}

static int push_result(lua_State *L, int op, int rc) {
  if (op == JOB_RESCAN) {
    lua_pushboolean(L, rc > 0);
    return 1;
  }
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, cpx_strerror(rc));
  return 2;
}

static int job_poll(lua_State *co, void *ud) {
  store_job_t *j = ud;
  int n;
  if (!j->finished)
    return 0;
  n = push_result(co, j->op, j->rc);
  job_free(j);
  return n;
}

static void job_cleanup(void *ud) {
  store_job_t *j = ud;
  if (j->finished)
    job_free(j);
  else
    j->abandoned = 1;
}

static int run(lua_State *L, int op, const char *name, const char *text,
               size_t len) {
  cpx_store_t *s = cpx_store_current();
  cpx_co_t *co = cpx__co_current(L);
  store_job_t *j;

  if (!s) {
    lua_pushnil(L);
    lua_pushstring(L, cpx_strerror(CPX_ESTATE));
    return 2;
  }
  if (!co || cpx__co_refusal(L, co))
    return push_result(L, op,
                       op == JOB_WRITE ? cpx_store_write(s, name, text, len)
                                       : cpx_store_rescan(s));
  j = calloc(1, sizeof(*j));
  if (!j || (name && !(j->name = strdup(name))) ||
      (text && !(j->text = malloc(len ? len : 1)))) {
    if (j)
      job_free(j);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  if (text)
    memcpy(j->text, text, len);
  j->s = s;
  j->op = op;
  j->len = len;
  if (uv_queue_work(cpx__co_loop(co), &j->req, job_work, job_after) != 0) {
    job_free(j);
    return push_result(L, op,
                       op == JOB_WRITE ? cpx_store_write(s, name, text, len)
                                       : cpx_store_rescan(s));
  }
  /* The poll only looks at a flag the loop thread sets: 2 ms is cheap. */
  return cpx__co_wait_poll(L, co, 2, job_poll, job_cleanup, j);
}

static int l_write_async(lua_State *L) {
  size_t len;
  const char *name = luaL_checkstring(L, 1);
  const char *text = luaL_checklstring(L, 2, &len);
  return run(L, JOB_WRITE, name, text, len);
}

static int l_rescan_async(lua_State *L) {
  return run(L, JOB_RESCAN, NULL, NULL, 0);
}

void cpx_store_async_lua_register(lua_State *L) {
  lua_getfield(L, -1, "store");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, l_write_async);
    lua_setfield(L, -2, "write_async");
    lua_pushcfunction(L, l_rescan_async);
    lua_setfield(L, -2, "rescan_async");
  }
  lua_pop(L, 1);
}
