/* cpx_mgmt_lua.c: cpx.mgmt over runtime/state/cpx_mgmt.c: bcrypt, the
 * key cache, the failed-attempt table and config.yaml I/O for
 * rt.management. Every blocking call is a threadpool job the calling
 * coroutine waits for (cpx_lua_await).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_log.h"
#include "cpx_lua.h"
#include "cpx_mgmt.h"
#include "cpx_worker.h"

static double mono_now(void) {
  return (double)uv_hrtime() / 1e9;
}

/* One job type for every threadpool call here; the strings are copies, so
 * nothing points into Lua memory while a pool thread runs. Freed by
 * job_free (cpx_lua_await calls done exactly once). */
typedef struct {
  cpx_lua_job_t job;
  int kind;
  char *a; /* password/key, or path */
  size_t alen;
  char *b; /* hash, or file text */
  size_t blen;
  char expect[CPX_MGMT_SHA_HEX]; /* write: "" = no check */
  int cost;
  int mode; /* write: permission bits, or -1 to keep the file's */
  int rc;
  int ok;
  char out[CPX_MGMT_MAX_HASH_LEN + 1];
  char sha[CPX_MGMT_SHA_HEX];
  char *text; /* read: the file (malloc) */
  size_t textlen;
  int conflict;
  int denied; /* the path is outside the allowed places */
} mjob_t;

enum { J_HASH, J_VERIFY, J_READ, J_WRITE, J_CLEAR_LOGS };

static char *dup_bytes(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

static void job_work(cpx_lua_job_t *job) {
  mjob_t *j = cpx_container_of(job, mjob_t, job);
  if ((j->kind == J_READ || j->kind == J_WRITE || j->kind == J_CLEAR_LOGS) &&
      !cpx_mgmt_path_allowed(j->a, j->kind == J_CLEAR_LOGS)) {
    j->rc = CPX_EINVAL;
    j->denied = 1;
    return;
  }
  switch (j->kind) {
  case J_HASH:
    j->rc = cpx_bcrypt_hash(j->a, j->alen, j->cost, j->out, sizeof(j->out));
    break;
  case J_VERIFY:
    j->ok = cpx_bcrypt_verify(j->a, j->alen, j->b);
    if (j->ok)
      cpx_mgmt_cache_put(j->a, j->alen, j->b);
    break;
  case J_READ:
    j->rc = cpx_mgmt_read_file(j->a, &j->text, &j->textlen, j->sha);
    break;
  case J_WRITE:
    j->rc =
        cpx_mgmt_write_file(j->a, j->b, j->blen, j->expect, j->mode, j->sha);
    if (j->rc == CPX_ESTATE) {
      j->conflict = 1;
      j->rc = 0;
    }
    break;
  case J_CLEAR_LOGS:
    j->rc = cpx_log_clear_dir(j->a);
    break;
  }
}

static int push_denied(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "path not allowed");
  return 2;
}

static int push_err(lua_State *L, int rc) {
  lua_pushnil(L);
  lua_pushstring(L, cpx_strerror(rc));
  return 2;
}

static int job_push(lua_State *L, cpx_lua_job_t *job) {
  mjob_t *j = cpx_container_of(job, mjob_t, job);
  if (j->denied)
    return push_denied(L);
  switch (j->kind) {
  case J_HASH:
    if (j->rc != 0)
      return push_err(L, j->rc);
    lua_pushstring(L, j->out);
    return 1;
  case J_VERIFY:
    lua_pushboolean(L, j->ok);
    return 1;
  case J_READ:
    if (j->rc != 0)
      return push_err(L, j->rc);
    lua_pushlstring(L, j->text, j->textlen);
    lua_pushstring(L, j->sha);
    return 2;
  case J_CLEAR_LOGS:
    if (j->rc < 0)
      return push_err(L, j->rc);
    lua_pushinteger(L, j->rc);
    return 1;
  default:
    if (j->conflict) {
      lua_pushnil(L);
      lua_pushliteral(L, "the file changed meanwhile");
      lua_pushliteral(L, "conflict");
      return 3;
    }
    if (j->rc != 0)
      return push_err(L, j->rc);
    lua_pushboolean(L, 1);
    lua_pushstring(L, j->sha);
    return 2;
  }
}

static void job_free(cpx_lua_job_t *job) {
  mjob_t *j = cpx_container_of(job, mjob_t, job);
  if (j->kind == J_VERIFY) /* counted in l_verify, whether it ran or not */
    cpx_mgmt_verify_end();
  if (j->a) {
    OPENSSL_cleanse(j->a, j->alen);
    free(j->a);
  }
  if (j->b) {
    OPENSSL_cleanse(j->b, j->blen);
    free(j->b);
  }
  free(j->text);
  free(j);
}

static mjob_t *job_new(lua_State *L, int kind, int ia, int ib) {
  mjob_t *j = calloc(1, sizeof(*j));
  const char *s;
  size_t n;
  if (!j)
    luaL_error(L, "out of memory");
  j->kind = kind;
  j->job.work = job_work;
  j->job.push = job_push;
  j->job.done = job_free;
  s = luaL_checklstring(L, ia, &n);
  j->a = dup_bytes(s, n);
  j->alen = n;
  if (ib) {
    s = luaL_checklstring(L, ib, &n);
    j->b = dup_bytes(s, n);
    j->blen = n;
  }
  if (!j->a || (ib && !j->b)) {
    job_free(&j->job);
    luaL_error(L, "out of memory");
  }
  return j;
}

/* cpx.mgmt.hash(pw[, cost]) -> hash | nil, err. Yields in a request. */
static int l_hash(lua_State *L) {
  int cost = (int)luaL_optinteger(L, 2, 10);
  mjob_t *j;
  luaL_checkstring(L, 1);
  if (cost < 4 || cost > 31)
    return luaL_argerror(L, 2, "cost must be 4..31");
  j = job_new(L, J_HASH, 1, 0);
  j->cost = cost;
  return cpx_lua_await(L, &j->job);
}

/* cpx.mgmt.verify(key, hash) -> boolean | nil, "busy". A key verified
 * before answers at once; otherwise bcrypt runs in the threadpool (yields
 * in a request). */
static int l_verify(lua_State *L) {
  size_t kn;
  const char *key = luaL_checklstring(L, 1, &kn);
  const char *hash = luaL_checkstring(L, 2);
  mjob_t *j;

  if (cpx_mgmt_cache_has(key, kn, hash)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (!cpx_mgmt_verify_begin()) {
    lua_pushnil(L);
    lua_pushliteral(L, "busy");
    return 2;
  }
  j = job_new(L, J_VERIFY, 1, 2);
  return cpx_lua_await(L, &j->job);
}

/* cpx.mgmt.read_file(path) -> text, sha256_hex | nil, err. Yields. */
static int l_read_file(lua_State *L) {
  return cpx_lua_await(L, &job_new(L, J_READ, 1, 0)->job);
}

/* cpx.mgmt.write_file(path, text[, expect_sha256_hex[, mode]]) -> true,
 * sha | nil, err[, "conflict"]. Atomic (tmp + fsync + rename + dir fsync);
 * keeps the file's permission bits unless mode is given (a new file: 0600).
 * With expect (false or "" for none), writes only while the file still has
 * that SHA-256. Yields. */
static int l_write_file(lua_State *L) {
  const char *expect = lua_toboolean(L, 3) ? luaL_checkstring(L, 3) : "";
  int mode = (int)luaL_optinteger(L, 4, -1);
  mjob_t *j;
  if (strlen(expect) != 0 && strlen(expect) != CPX_MGMT_SHA_HEX - 1)
    return luaL_argerror(L, 3, "expected a SHA-256 in hex");
  if (mode < -1 || mode > 0777)
    return luaL_argerror(L, 4, "mode must be 0..0777");
  j = job_new(L, J_WRITE, 1, 2);
  j->mode = mode;
  snprintf(j->expect, sizeof(j->expect), "%s", expect);
  return cpx_lua_await(L, &j->job);
}

/* cpx.mgmt.clear_logs(dir) -> files removed | nil, err: empties
 * dir/main.log in place and deletes main-*.log (threadpool; yields). */
static int l_clear_logs(lua_State *L) {
  return cpx_lua_await(L, &job_new(L, J_CLEAR_LOGS, 1, 0)->job);
}

/* cpx.mgmt.allow({path, ...}): the files and directories read_file,
 * write_file and clear_logs may touch from now on, process-wide (every
 * worker loads the same config; the latest load wins). At most 8. */
static int l_allow(lua_State *L) {
  const char *v[CPX_MGMT_MAX_ALLOWED];
  int n = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  /* the strings stay anchored by the table while cpx_mgmt_allow copies */
  for (int i = 1; i <= CPX_MGMT_MAX_ALLOWED; i++) {
    size_t len;
    const char *p;
    lua_rawgeti(L, 1, i);
    p = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);
    if (p && len > 0)
      v[n++] = p;
  }
  cpx_mgmt_allow(v, n);
  return 0;
}

/* cpx.mgmt.banned(addr) -> seconds left | nil */
static int l_banned(lua_State *L) {
  double left = cpx_mgmt_banned(luaL_checkstring(L, 1), mono_now());
  if (left <= 0)
    return 0;
  lua_pushnumber(L, left);
  return 1;
}

/* cpx.mgmt.fail(addr) -> failures so far (0: now banned) */
static int l_fail(lua_State *L) {
  lua_pushinteger(L, cpx_mgmt_fail(luaL_checkstring(L, 1), mono_now()));
  return 1;
}

static int l_reset(lua_State *L) {
  cpx_mgmt_reset(luaL_checkstring(L, 1));
  return 0;
}

/* cpx.mgmt.primary() -> true in worker 0 of a running server: the one
 * generation that may write config.yaml at load. */
static int l_primary(lua_State *L) {
  cpx_worker_t *w;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_pushboolean(L, w != NULL && w->loop != NULL && w->id == 0);
  return 1;
}

/* cpx.mgmt.env_secret() -> MANAGEMENT_PASSWORD without surrounding blanks,
 * or nil (the sandbox has no os.getenv). */
static int l_env_secret(lua_State *L) {
  size_t n;
  const char *v = cpx_mgmt_env_secret(&n);
  if (!v)
    return 0;
  lua_pushlstring(L, v, n);
  return 1;
}

void cpx_mgmt_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"hash", l_hash},
                                 {"verify", l_verify},
                                 {"read_file", l_read_file},
                                 {"write_file", l_write_file},
                                 {"banned", l_banned},
                                 {"fail", l_fail},
                                 {"reset", l_reset},
                                 {"primary", l_primary},
                                 {"env_secret", l_env_secret},
                                 {"clear_logs", l_clear_logs},
                                 {"allow", l_allow},
                                 {NULL, NULL}};
  cpx_lua_register_table(L, "mgmt", fns);
  lua_getfield(L, -1, "mgmt");
  lua_pushliteral(L, CPX_VERSION);
  lua_setfield(L, -2, "version");
  lua_pop(L, 1);
}
