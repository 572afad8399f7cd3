/* cpx_reqlog.c: cpx.reqlog, the file side of the per-request logs
 * (lua/rt/reqlog.lua builds the text, already redacted).
 *
 * Writes are fire-and-forget jobs in libuv's threadpool: the record
 * subscriber that asks for one must not yield, and a request must never wait
 * for its own log. They are bounded process-wide (jobs and bytes waiting);
 * past the bound a log is dropped and the caller told so. Listing and
 * reading yield the calling coroutine (cpx_lua_await). */
#include "cpx_reqlog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_lua.h"
#include "cpx_worker.h"
#include "cpx_store.h"

#define REQLOG_MAX_JOBS 64                  /* writes waiting, process */
#define REQLOG_MAX_BYTES ((size_t)64 << 20) /* their text, process */
#define REQLOG_MAX_FILE ((size_t)16 << 20)  /* one file written or read */
#define REQLOG_MAX_LIST 4096                /* entries a list answers */

static atomic_int pending_jobs;
static atomic_size_t pending_bytes;

int cpx_reqlog_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n < 5 || n > 255 || name[0] == '.' || strcmp(name + n - 4, ".log") != 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
      return 0;
  }
  return 1;
}

/* A file of dir that a listing reports. */
typedef struct {
  char name[256];
  long long size;
  double mtime;
} entry_t;

static int entry_newer_first(const void *a, const void *b) {
  const entry_t *x = a, *y = b;
  if (x->mtime != y->mtime)
    return x->mtime < y->mtime ? 1 : -1;
  return strcmp(y->name, x->name);
}

/* Regular files of dir named prefix*.log (suffix: and ending so), newest
 * first. *out is malloc'd (caller frees); returns the count or -errno. */
static int scan(const char *dir, const char *prefix, const char *suffix,
                entry_t **out) {
  DIR *d = opendir(dir);
  struct dirent *de;
  entry_t *v = NULL;
  int n = 0, cap = 0;
  size_t pl = strlen(prefix), sl = suffix ? strlen(suffix) : 0;
  *out = NULL;
  if (!d)
    return -errno;
  while ((de = readdir(d)) != NULL) {
    struct stat st;
    size_t nl = strlen(de->d_name);
    if (!cpx_reqlog_name_ok(de->d_name) || strncmp(de->d_name, prefix, pl))
      continue;
    if (sl && (nl < sl || strcmp(de->d_name + nl - sl, suffix) != 0))
      continue;
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode))
      continue;
    if (n == cap) {
      int nc = cap ? cap * 2 : 32;
      entry_t *nv = realloc(v, (size_t)nc * sizeof(*v));
      if (!nv)
        break;
      v = nv;
      cap = nc;
    }
    snprintf(v[n].name, sizeof(v[n].name), "%s", de->d_name);
    v[n].size = (long long)st.st_size;
    v[n].mtime = (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9;
    n++;
  }
  closedir(d);
  if (n > 1)
    qsort(v, (size_t)n, sizeof(*v), entry_newer_first);
  *out = v;
  return n;
}

int cpx_reqlog_prune(const char *dir, const char *prefix, int keep) {
  entry_t *v;
  int n = scan(dir, prefix, NULL, &v), removed = 0;
  char path[4096];
  if (n < 0)
    return n;
  for (int i = keep < 0 ? n : keep; i < n; i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, v[i].name);
    if (unlink(path) == 0)
      removed++;
  }
  free(v);
  return removed;
}

/* mkdir -p with 0700 for the directories it creates. */
static int make_dirs(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof(p))
    return -EINVAL;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] == '/' || p[i] == '\0') {
      char c = p[i];
      p[i] = '\0';
      if (mkdir(p, 0700) != 0 && errno != EEXIST)
        return -errno;
      p[i] = c;
    }
  }
  return 0;
}

/* ---- writes: fire and forget ------------------------------------------- */

/* Owned by the threadpool once queued; freed in write_after. */
typedef struct {
  uv_work_t req;
  char dir[4096];
  char name[256];
  char prune[64]; /* prefix to prune after the write ("" none) */
  int keep;
  char *text;
  size_t len;
} wjob_t;

static void write_work(uv_work_t *req) {
  wjob_t *j = cpx_container_of(req, wjob_t, req);
  if (make_dirs(j->dir) == 0 &&
      cpx_write_atomic(j->dir, j->name, j->text, j->len, 0600) == 0 &&
      j->prune[0])
    cpx_reqlog_prune(j->dir, j->prune, j->keep);
}

static void write_after(uv_work_t *req, int status) {
  wjob_t *j = cpx_container_of(req, wjob_t, req);
  (void)status;
  atomic_fetch_sub(&pending_bytes, j->len);
  atomic_fetch_sub(&pending_jobs, 1);
  free(j->text);
  free(j);
}

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
  wjob_t *j;
  if (!cpx_reqlog_name_ok(name))
    return luaL_argerror(L, 2, "not a plain *.log name");
  if (strlen(dir) >= sizeof(j->dir) || strlen(prune) >= sizeof(j->prune))
    return luaL_argerror(L, 1, "too long");
  if (len > REQLOG_MAX_FILE) {
    lua_pushnil(L);
    lua_pushliteral(L, "too large");
    return 2;
  }
  /* both counters are taken first and given back on refusal */
  if ((atomic_fetch_add(&pending_jobs, 1) >= REQLOG_MAX_JOBS) |
      (atomic_fetch_add(&pending_bytes, len) + len > REQLOG_MAX_BYTES)) {
    atomic_fetch_sub(&pending_jobs, 1);
    atomic_fetch_sub(&pending_bytes, len);
    lua_pushnil(L);
    lua_pushliteral(L, "busy");
    return 2;
  }
  j = calloc(1, sizeof(*j));
  if (j)
    j->text = malloc(len ? len : 1);
  if (!j || !j->text) {
    if (j)
      free(j);
    atomic_fetch_sub(&pending_jobs, 1);
    atomic_fetch_sub(&pending_bytes, len);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  memcpy(j->text, text, len);
  j->len = len;
  snprintf(j->dir, sizeof(j->dir), "%s", dir);
  snprintf(j->name, sizeof(j->name), "%s", name);
  snprintf(j->prune, sizeof(j->prune), "%s", prune);
  j->keep = keep;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (w && w->loop) {
    if (uv_queue_work(w->loop, &j->req, write_work, write_after) == 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  /* no loop (busted, cliproxy check): write now */
  write_work(&j->req);
  write_after(&j->req, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- list, read, find: the calling coroutine waits --------------------- */

enum { J_LIST, J_READ, J_FIND };

/* Freed by job_done (cpx_lua_await calls it once). */
typedef struct {
  cpx_lua_job_t job;
  int kind;
  char dir[4096];
  char arg[256]; /* prefix (list), name (read), id suffix (find) */
  entry_t *v;
  int n;
  char *text;
  size_t len;
  char name[256];
  int err;
} rjob_t;

static int read_in(const char *dir, const char *name, char **out, size_t *len) {
  char path[4400];
  struct stat st;
  int fd;
  char *buf;
  size_t got = 0;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (size_t)st.st_size > REQLOG_MAX_FILE) {
    close(fd);
    return -EINVAL;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return -ENOMEM;
  }
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  *out = buf;
  *len = got;
  return 0;
}

static void rjob_work(cpx_lua_job_t *job) {
  rjob_t *j = (rjob_t *)job;
  if (j->kind == J_LIST) {
    j->n = scan(j->dir, j->arg, NULL, &j->v);
    if (j->n < 0)
      j->err = j->n;
  } else if (j->kind == J_READ) {
    j->err = read_in(j->dir, j->arg, &j->text, &j->len);
    snprintf(j->name, sizeof(j->name), "%s", j->arg);
  } else {
    entry_t *v;
    int n = scan(j->dir, "", j->arg, &v);
    if (n <= 0) {
      j->err = n < 0 ? n : -ENOENT;
      free(v);
      return;
    }
    snprintf(j->name, sizeof(j->name), "%s", v[0].name);
    free(v);
    j->err = read_in(j->dir, j->name, &j->text, &j->len);
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
  lua_pushinteger(L, atomic_load(&pending_jobs));
  lua_pushnumber(L, (lua_Number)atomic_load(&pending_bytes));
  return 2;
}

void cpx_reqlog_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"write", l_write},     {"list", l_list},
                                 {"read", l_read},       {"find", l_find},
                                 {"pending", l_pending}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_setfield(L, -2, "reqlog");
}
