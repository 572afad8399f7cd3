/* cpx_tokens_lua.c: cpx.tokens (runtime/core/cpx_tokens.c).
 *
 *   cpx.tokens.count(text[, encoding]) -> n | nil, err   on the calling
 *       thread (cpx_tokens_lua_register)
 *   cpx.tokens.count_async(text[, encoding]) -> n | nil, err   in libuv's
 *       threadpool while the calling coroutine waits (request-bound:
 *       cpx__count_lua_register, from cpx_co.c)
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_lua_int.h"
#include "cpx_tokens.h"

/* tokens.count(text[, encoding = "o200k_base"]) -> n | nil, err */
static int l_count(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *encoding = luaL_optstring(L, 2, "o200k_base");
  size_t count = 0;
  int rc = cpx_tokens_count(encoding, text, len, &count);
  if (rc < 0) {
    char msg[PATH_MAX + 256];
    cpx_tokens_describe_error(encoding, rc, msg, sizeof(msg));
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  lua_pushnumber(L, (lua_Number)count);
  return 1;
}

void cpx_tokens_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"count", l_count}, {NULL, NULL}};
  cpx_lua_register_table(L, "tokens", fns);
}

/* Counting a large body takes milliseconds; on the loop it would stall
 * every other request of the worker, so the request phase counts in libuv's
 * threadpool (cpx_lua_await). The job counts its own copy of the text: a
 * copy costs microseconds where the count costs milliseconds, and the job
 * then holds nothing of the VM. Owned by cpx_lua_await until done(). */
typedef struct {
  cpx_lua_job_t job;
  char enc[32];
  size_t len;
  size_t count;
  int rc;
  char text[]; /* len bytes */
} count_job_t;

static void count_work(cpx_lua_job_t *job) {
  count_job_t *j = cpx_container_of(job, count_job_t, job);
  j->rc = cpx_tokens_count(j->enc, j->text, j->len, &j->count);
}

static int count_push(lua_State *L, cpx_lua_job_t *job) {
  count_job_t *j = cpx_container_of(job, count_job_t, job);
  if (j->rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, cpx_strerror(j->rc));
    return 2;
  }
  lua_pushnumber(L, (lua_Number)j->count);
  return 1;
}

static void count_free(cpx_lua_job_t *job) {
  free(cpx_container_of(job, count_job_t, job));
}

/* cpx.tokens.count_async(text[, encoding]) -> n | nil, err. Yields in the
 * request phase (elsewhere it counts synchronously). */
static int l_count_async(lua_State *L) {
  lreq_t *lr = cpx__co_current(L);
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *enc = luaL_optstring(L, 2, "o200k_base");
  count_job_t *j;

  /* Outside a coroutine, or in one that may no longer wait (a premature
   * task): count here and now. */
  if (!lr || lr->refuse || lr->aborted) {
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
  j = malloc(sizeof(*j) + len + 1);
  if (!j)
    return luaL_error(L, "out of memory");
  memset(&j->job, 0, sizeof(j->job));
  j->job.work = count_work;
  j->job.push = count_push;
  j->job.done = count_free;
  snprintf(j->enc, sizeof(j->enc), "%s", enc);
  memcpy(j->text, text, len);
  j->text[len] = '\0';
  j->len = len;
  j->count = 0;
  j->rc = 0;
  return cpx_lua_await(L, &j->job);
}

void cpx__count_lua_register(lua_State *L, int t) {
  lua_getfield(L, t, "tokens");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, l_count_async);
    lua_setfield(L, -2, "count_async");
  }
  lua_pop(L, 1);
}
