/* cpx_mgmt.c: bcrypt, the verified-key cache, the failed-attempt table and
 * config.yaml I/O for the management API (see cpx_mgmt.h). */
#include "cpx_mgmt.h"

#include <crypt.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_log.h"
#include "cpx_lua.h"
#include "cpx_worker.h"
#include "cpx_store.h"

/* Verified keys kept; a panel and a script or two need a handful. */
#define CACHE_SLOTS 16
/* Addresses tracked; the least recently seen one that is not banned makes
 * room (a banned one only when every slot is banned). */
#define BAN_SLOTS 1024
/* bcrypt checks in the threadpool at once, process-wide: a flood of wrong
 * keys must not occupy libuv's (4) threads that file I/O also needs. */
#define MAX_VERIFY_INFLIGHT 2
#define MAX_HASH_LEN 128
#define MAX_CONFIG_BYTES (16 * 1024 * 1024)

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t mu;
static atomic_int verify_inflight;

static void init_once(void) {
  uv_mutex_init(&mu);
}

/* ---- bcrypt ----------------------------------------------------------------
 */

int cpx_bcrypt_hash(const char *pw, size_t pwlen, int cost, char *out,
                    size_t outlen) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  struct crypt_data *cd;
  const char *h;
  int rc = 0;

  if (memchr(pw, '\0', pwlen) != NULL || cost < 4 || cost > 31)
    return CPX_EINVAL;
  /* NULL random bytes: libxcrypt reads the OS's CSPRNG. */
  if (!crypt_gensalt_rn("$2b$", (unsigned long)cost, NULL, 0, salt,
                        (int)sizeof(salt)))
    return CPX_EIO;
  cd = calloc(1, sizeof(*cd));
  if (!cd)
    return CPX_ENOMEM;
  h = crypt_rn(pw, salt, cd, (int)sizeof(*cd));
  if (!h || h[0] == '*')
    rc = CPX_EIO;
  else if (strlen(h) >= outlen)
    rc = CPX_ELIMIT;
  else
    snprintf(out, outlen, "%s", h);
  OPENSSL_cleanse(cd, sizeof(*cd));
  free(cd);
  return rc;
}

int cpx_bcrypt_verify(const char *pw, size_t pwlen, const char *hash) {
  struct crypt_data *cd;
  const char *h;
  size_t n = strlen(hash);
  int ok = 0;

  if (memchr(pw, '\0', pwlen) != NULL || n == 0 || n > MAX_HASH_LEN)
    return 0;
  cd = calloc(1, sizeof(*cd));
  if (!cd)
    return 0;
  h = crypt_rn(pw, hash, cd, (int)sizeof(*cd));
  /* A failure is "*0"/"*1", never equal to a real hash. */
  if (h && strlen(h) == n && CRYPTO_memcmp(h, hash, n) == 0)
    ok = 1;
  OPENSSL_cleanse(cd, sizeof(*cd));
  free(cd);
  return ok;
}

/* ---- verified-key cache ----------------------------------------------------
 */

static struct {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  char hash[MAX_HASH_LEN + 1];
  uint64_t used; /* 0: empty */
} cache[CACHE_SLOTS];
static uint64_t cache_tick;

int cpx_mgmt_cache_has(const char *key, size_t keylen, const char *hash) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  int hit = 0;

  SHA256((const unsigned char *)key, keylen, d);
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  /* Every slot is compared, so the time says nothing about which matched. */
  for (int i = 0; i < CACHE_SLOTS; i++) {
    int same = cache[i].used != 0 &&
               CRYPTO_memcmp(cache[i].digest, d, sizeof(d)) == 0 &&
               strcmp(cache[i].hash, hash) == 0;
    if (same) {
      cache[i].used = ++cache_tick;
      hit = 1;
    }
  }
  uv_mutex_unlock(&mu);
  OPENSSL_cleanse(d, sizeof(d));
  return hit;
}

void cpx_mgmt_cache_put(const char *key, size_t keylen, const char *hash) {
  int slot = 0;

  if (strlen(hash) > MAX_HASH_LEN)
    return;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  for (int i = 1; i < CACHE_SLOTS; i++)
    if (cache[i].used < cache[slot].used)
      slot = i;
  SHA256((const unsigned char *)key, keylen, cache[slot].digest);
  snprintf(cache[slot].hash, sizeof(cache[slot].hash), "%s", hash);
  cache[slot].used = ++cache_tick;
  uv_mutex_unlock(&mu);
}

void cpx_mgmt_cache_clear(void) {
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  OPENSSL_cleanse(cache, sizeof(cache));
  uv_mutex_unlock(&mu);
}

/* ---- failed attempts -------------------------------------------------------
 */

static struct {
  char addr[64]; /* "" : empty */
  int count;
  double banned_until; /* 0: not banned */
  double seen;
} bans[BAN_SLOTS];

/* Caller holds mu. Returns the slot of addr, or -1. */
static int ban_find(const char *addr) {
  for (int i = 0; i < BAN_SLOTS; i++)
    if (bans[i].addr[0] && strcmp(bans[i].addr, addr) == 0)
      return i;
  return -1;
}

double cpx_mgmt_banned(const char *addr, double now) {
  double left = 0;
  int i;

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  i = ban_find(addr);
  if (i >= 0 && bans[i].banned_until > 0) {
    if (now < bans[i].banned_until) {
      left = bans[i].banned_until - now;
    } else {
      bans[i].banned_until = 0; /* served its time: start over */
      bans[i].count = 0;
    }
  }
  uv_mutex_unlock(&mu);
  return left;
}

int cpx_mgmt_fail(const char *addr, double now) {
  int i, n;

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  i = ban_find(addr);
  if (i < 0) {
    int victim = -1;
    for (int j = 0; j < BAN_SLOTS; j++) {
      if (!bans[j].addr[0]) {
        victim = j;
        break;
      }
      if (bans[j].banned_until <= now &&
          (victim < 0 || bans[j].seen < bans[victim].seen))
        victim = j;
    }
    if (victim < 0) { /* all banned: the oldest goes */
      victim = 0;
      for (int j = 1; j < BAN_SLOTS; j++)
        if (bans[j].seen < bans[victim].seen)
          victim = j;
    }
    i = victim;
    memset(&bans[i], 0, sizeof(bans[i]));
    snprintf(bans[i].addr, sizeof(bans[i].addr), "%s", addr);
  }
  bans[i].seen = now;
  n = ++bans[i].count;
  if (n >= CPX_MGMT_MAX_FAILURES) {
    bans[i].banned_until = now + CPX_MGMT_BAN_SECONDS;
    bans[i].count = 0;
    n = 0;
  }
  uv_mutex_unlock(&mu);
  return n;
}

void cpx_mgmt_reset(const char *addr) {
  int i;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  if ((i = ban_find(addr)) >= 0)
    memset(&bans[i], 0, sizeof(bans[i]));
  uv_mutex_unlock(&mu);
}

void cpx_mgmt_bans_clear(void) {
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  memset(bans, 0, sizeof(bans));
  uv_mutex_unlock(&mu);
}

static double mono_now(void) {
  return (double)uv_hrtime() / 1e9;
}

/* ---- Lua: jobs -------------------------------------------------------------
 */

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
  char expect[SHA256_DIGEST_LENGTH * 2 + 1]; /* write: "" = no check */
  int cost;
  int mode; /* write: permission bits, or -1 to keep the file's */
  int rc;
  int ok;
  char out[MAX_HASH_LEN + 1];
  char sha[SHA256_DIGEST_LENGTH * 2 + 1];
  char *text; /* read: the file (malloc) */
  size_t textlen;
  int conflict;
  int denied; /* the path is outside the allowed places */
} mjob_t;

enum { J_HASH, J_VERIFY, J_READ, J_WRITE, J_CLEAR_LOGS };

static void hex(const unsigned char *d, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Reads path whole into *out (malloc, NUL-terminated). */
static int read_whole(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  char *buf;
  size_t n;
  int rc = 0;

  *out = NULL;
  *len = 0;
  if (!f)
    return -errno;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return CPX_EINVAL;
  }
  if (st.st_size > MAX_CONFIG_BYTES) {
    fclose(f);
    return CPX_ELIMIT;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    fclose(f);
    return CPX_ENOMEM;
  }
  n = fread(buf, 1, (size_t)st.st_size, f);
  if (ferror(f))
    rc = CPX_EIO;
  fclose(f);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

static void file_sha(const char *p, size_t n, char *out) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)p, n, d);
  hex(d, sizeof(d), out);
}

/* The compare-and-swap is under mu, so two workers' writes are ordered; a
 * write from outside (an editor) between read and write is caught too. */
static void do_write(mjob_t *j) {
  char dirbuf[PATH_MAX], basebuf[PATH_MAX];
  struct stat st;
  unsigned mode = 0600;

  if (snprintf(dirbuf, sizeof(dirbuf), "%s", j->a) >= (int)sizeof(dirbuf)) {
    j->rc = CPX_ELIMIT;
    return;
  }
  snprintf(basebuf, sizeof(basebuf), "%s", j->a);
  uv_mutex_lock(&mu);
  if (j->mode >= 0)
    mode = (unsigned)j->mode;
  else if (stat(j->a, &st) == 0)
    mode = (unsigned)(st.st_mode & 0777);
  if (j->expect[0]) {
    char *cur;
    size_t curlen;
    char sha[sizeof(j->sha)];
    int r = read_whole(j->a, &cur, &curlen);
    if (r != 0) {
      uv_mutex_unlock(&mu);
      j->rc = r;
      return;
    }
    file_sha(cur, curlen, sha);
    free(cur);
    if (strcmp(sha, j->expect) != 0) {
      uv_mutex_unlock(&mu);
      j->conflict = 1;
      return;
    }
  }
  j->rc =
      cpx_write_atomic(dirname(dirbuf), basename(basebuf), j->b, j->blen, mode);
  uv_mutex_unlock(&mu);
  if (j->rc == 0)
    file_sha(j->b, j->blen, j->sha);
}

/* ---- where read_file / write_file / clear_logs may go ------------------
 * rt.management sets the places (auth-dir, the logs directory, config.yaml)
 * at every load: a path is allowed when it is one of the files, or a plain
 * name (not a symlink) directly inside one of the directories, both sides
 * resolved with realpath in the threadpool. Until the first allow() call
 * (busted, cliproxy check) every path is allowed. */
#define MAX_ALLOWED 8
static pthread_mutex_t allow_mu = PTHREAD_MUTEX_INITIALIZER;
static char *allowed[MAX_ALLOWED];
static int nallowed = -1; /* -1: never set */

static int same_real(const char *a, const char *b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  return realpath(a, ra) && realpath(b, rb) && strcmp(ra, rb) == 0;
}

static int path_allowed(const char *path, int is_dir) {
  char dir[PATH_MAX];
  const char *base;
  int ok = 0;
  struct stat st;
  pthread_mutex_lock(&allow_mu);
  if (nallowed < 0) {
    pthread_mutex_unlock(&allow_mu);
    return 1;
  }
  base = strrchr(path, '/');
  if (base) {
    size_t n = (size_t)(base - path);
    if (n >= sizeof(dir))
      n = sizeof(dir) - 1;
    memcpy(dir, path, n);
    dir[n ? n : 1] = '\0';
    if (n == 0)
      dir[0] = '/';
    base++;
  } else {
    snprintf(dir, sizeof(dir), ".");
    base = path;
  }
  for (int i = 0; i < nallowed && !ok; i++) {
    if (same_real(path, allowed[i])) {
      ok = 1; /* the file itself (config.yaml) or an allowed directory */
    } else if (!is_dir && base[0] != '\0' && base[0] != '.' &&
               same_real(dir, allowed[i])) {
      /* a plain name inside an allowed directory, not a link out of it */
      ok = lstat(path, &st) != 0 || !S_ISLNK(st.st_mode);
    }
  }
  pthread_mutex_unlock(&allow_mu);
  return ok;
}

static void job_work(cpx_lua_job_t *job) {
  mjob_t *j = cpx_container_of(job, mjob_t, job);
  if ((j->kind == J_READ || j->kind == J_WRITE || j->kind == J_CLEAR_LOGS) &&
      !path_allowed(j->a, j->kind == J_CLEAR_LOGS)) {
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
    j->rc = read_whole(j->a, &j->text, &j->textlen);
    if (j->rc == 0)
      file_sha(j->text, j->textlen, j->sha);
    break;
  case J_WRITE:
    do_write(j);
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
    atomic_fetch_sub(&verify_inflight, 1);
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

static char *dup_bytes(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
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
  if (atomic_fetch_add(&verify_inflight, 1) >= MAX_VERIFY_INFLIGHT) {
    atomic_fetch_sub(&verify_inflight, 1);
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
  if (strlen(expect) != 0 && strlen(expect) != SHA256_DIGEST_LENGTH * 2)
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
  char *v[MAX_ALLOWED];
  int n = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  for (int i = 1; i <= MAX_ALLOWED; i++) {
    size_t len;
    const char *p;
    lua_rawgeti(L, 1, i);
    p = lua_tolstring(L, -1, &len);
    if (p && len > 0)
      v[n] = dup_bytes(p, len);
    lua_pop(L, 1);
    if (p && len > 0 && v[n])
      n++;
  }
  pthread_mutex_lock(&allow_mu);
  for (int i = 0; i < (nallowed > 0 ? nallowed : 0); i++)
    free(allowed[i]);
  for (int i = 0; i < n; i++)
    allowed[i] = v[i];
  nallowed = n;
  pthread_mutex_unlock(&allow_mu);
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
  const char *v = getenv("MANAGEMENT_PASSWORD");
  size_t n;
  if (!v)
    return 0;
  while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')
    v++;
  n = strlen(v);
  while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\n' ||
                   v[n - 1] == '\r'))
    n--;
  if (n == 0)
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
  uv_once(&once, init_once);
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushliteral(L, CPX_VERSION);
  lua_setfield(L, -2, "version");
  lua_setfield(L, -2, "mgmt");
}
