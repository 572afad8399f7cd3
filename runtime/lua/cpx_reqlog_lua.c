/* cpx_reqlog_lua.c: cpx.reqlog over runtime/state/cpx_reqlog.c.
 *
 * write never yields (the file is written by a threadpool job later);
 * list, read and find yield the calling coroutine while a threadpool job
 * does the blocking part (cpx_lua_await).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_lua.h"
#include "cpx_reqlog.h"
#include "cpx_worker.h"

/* cpx.reqlog.write(dir, name, text[, prune_prefix, keep]) -> true | nil,
 * err. Queued in the threadpool (never yields; the file appears later):
 * dir is created 0700, the file written atomically with mode 0600, then the
 * oldest prune_prefix*.log files deleted beyond keep. nil, "busy" when too
 * much is waiting already. */
static int l_write(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  const char *name = luaL_checkstring(L, 2);
  size_t len;
  const char *text = luaL_checklstring(L, 3, &len);
  const char *prune = luaL_optstring(L, 4, "");
  int keep = (int)luaL_optinteger(L, 5, 0);
  cpx_worker_t *w;
  int rc;
  if (!cpx_reqlog_name_ok(name))
    return luaL_argerror(L, 2, "not a plain *.log name");
  if (strlen(dir) >= CPX_REQLOG_MAX_DIR ||
      strlen(prune) >= CPX_REQLOG_MAX_PREFIX)
    return luaL_argerror(L, 1, "too long");
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  rc = cpx_reqlog_write(w ? w->loop : NULL, dir, name, text, len, prune, keep);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, rc == CPX_ELIMIT   ? "too large"
                      : rc == CPX_EAGAIN ? "busy"
                      : rc == CPX_ENOMEM ? "out of memory"
                                         : cpx_strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- list, read, find: the calling coroutine waits --------------------- */

#define REQLOG_MAX_LIST 4096 /* entries a list answers */

enum { J_LIST, J_READ, J_FIND };

/* Freed by job_done (cpx_lua_await calls it once). */
typedef struct {
  cpx_lua_job_t job;
  int kind;
  char dir[CPX_REQLOG_MAX_DIR];
  char arg[256]; /* prefix (list), name (read), id suffix (find) */
  cpx_reqlog_entry_t *v;
  int n;
  char *text;
  size_t len;
  char name[256];
  int err;
} rjob_t;

static void rjob_work(cpx_lua_job_t *job) {
  rjob_t *j = (rjob_t *)job;
  if (j->kind == J_LIST) {
    j->n = cpx_reqlog_list(j->dir, j->arg, &j->v);
    if (j->n < 0)
      j->err = j->n;
  } else if (j->kind == J_READ) {
    j->err = cpx_reqlog_read(j->dir, j->arg, &j->text, &j->len);
    snprintf(j->name, sizeof(j->name), "%s", j->arg);
  } else {
    j->err = cpx_reqlog_find(j->dir, j->arg, j->name, sizeof(j->name), &j->text,
                             &j->len);
  }
}

static int rjob_push(lua_State *L, cpx_lua_job_t *job) {
  rjob_t *j = (rjob_t *)job;
  if (j->err) {
    lua_pushnil(L);
    lua_pushstring(L, j->err == -ENOENT ? "not found" : strerror(-j->err));
    return 2;
  }
  if (j->kind == J_LIST) {
    int n = j->n < REQLOG_MAX_LIST ? j->n : REQLOG_MAX_LIST;
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
      lua_createtable(L, 0, 3);
      lua_pushstring(L, j->v[i].name);
      lua_setfield(L, -2, "name");
      lua_pushnumber(L, (lua_Number)j->v[i].size);
      lua_setfield(L, -2, "size");
      lua_pushnumber(L, j->v[i].mtime);
      lua_setfield(L, -2, "modified");
      lua_rawseti(L, -2, i + 1);
    }
    return 1;
  }
  lua_pushlstring(L, j->text, j->len);
  lua_pushstring(L, j->name);
  return 2;
}

static void rjob_done(cpx_lua_job_t *job) {
  rjob_t *j = (rjob_t *)job;
  free(j->v);
  free(j->text);
  free(j);
}

static int rjob_start(lua_State *L, int kind, const char *arg) {
  const char *dir = luaL_checkstring(L, 1);
  rjob_t *j;
  if (strlen(dir) >= sizeof(j->dir))
    return luaL_argerror(L, 1, "too long");
  j = calloc(1, sizeof(*j));
  if (!j)
    return luaL_error(L, "out of memory");
  j->kind = kind;
  snprintf(j->dir, sizeof(j->dir), "%s", dir);
  snprintf(j->arg, sizeof(j->arg), "%s", arg);
  j->job.work = rjob_work;
  j->job.push = rjob_push;
  j->job.done = rjob_done;
  return cpx_lua_await(L, &j->job);
}

/* cpx.reqlog.list(dir, prefix) -> {{name, size, modified}, ...} newest
 * first | nil, err. Yields. */
static int l_list(lua_State *L) {
  const char *prefix = luaL_checkstring(L, 2);
  if (strlen(prefix) >= 64)
    return luaL_argerror(L, 2, "too long");
  return rjob_start(L, J_LIST, prefix);
}

/* cpx.reqlog.read(dir, name) -> text, name | nil, "not found" | nil, err.
 * name must be a plain *.log name (no path). Yields. */
static int l_read(lua_State *L) {
  const char *name = luaL_checkstring(L, 2);
  if (!cpx_reqlog_name_ok(name)) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  return rjob_start(L, J_READ, name);
}

/* cpx.reqlog.find(dir, id) -> text, name of the newest *-<id>.log | nil,
 * "not found". id: 1..64 of [A-Za-z0-9]. Yields. */
static int l_find(lua_State *L) {
  const char *id = luaL_checkstring(L, 2);
  char suffix[80];
  size_t n = strlen(id);
  int ok = n >= 1 && n <= 64;
  for (size_t i = 0; ok && i < n; i++) {
    char c = id[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
  }
  if (!ok) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  snprintf(suffix, sizeof(suffix), "-%s.log", id);
  return rjob_start(L, J_FIND, suffix);
}

/* cpx.reqlog.pending() -> jobs, bytes waiting (tests, metrics). */
static int l_pending(lua_State *L) {
  int jobs;
  size_t bytes;
  cpx_reqlog_pending(&jobs, &bytes);
  lua_pushinteger(L, jobs);
  lua_pushnumber(L, (lua_Number)bytes);
  return 2;
}

void cpx_reqlog_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"write", l_write},     {"list", l_list},
                                 {"read", l_read},       {"find", l_find},
                                 {"pending", l_pending}, {NULL, NULL}};
  cpx_lua_register_table(L, "reqlog", fns);
}
