/* cpx_panel.c: `cpx.panel`, the one file access the Lua side has: it reads
 * the built-in web control panel's static files (rt.panel serves them).
 *
 * The directory is CPX_PANEL_DIR, else panel/ beside the built-in lua/
 * directory (the source tree, or <prefix>/share/cliproxy after cmake
 * --install), found the way lua/ is. Only names made of [A-Za-z0-9_.-]
 * components, none starting with a dot, are read, so no request path can
 * leave that directory; symlinks are not followed (O_NOFOLLOW on the last
 * component). Reads run in libuv's threadpool (cpx_lua_await): a cold
 * disk never stalls the worker's loop. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_lua.h"
#include "cpx_worker.h"

/* No panel file comes near this; it bounds what one read holds. */
#define PANEL_MAX_FILE (4u << 20)

/* One read. Owned by cpx_lua_await until its done callback. */
typedef struct {
  cpx_lua_job_t job; /* first: the job is the whole struct */
  char path[PATH_MAX + 256];
  char *data; /* malloc'd by the work, freed by panel_release */
  size_t len;
  double mtime;
  int err; /* errno value, 0 ok */
} panel_read_t;

int cpx_panel_name_ok(const char *name) {
  size_t n = strlen(name);
  int start = 1;
  if (n == 0 || n > 200)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (c == '/') {
      if (start)
        return 0; /* an empty component or a leading slash */
      start = 1;
      continue;
    }
    if (start && c == '.')
      return 0; /* ".", "..", hidden files */
    start = 0;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
      return 0;
  }
  return !start; /* no trailing slash */
}

static int panel_dir(lua_State *L, char *out, size_t outlen) {
  const char *env = getenv("CPX_PANEL_DIR");
  cpx_worker_t *w;
  if (env && *env) {
    snprintf(out, outlen, "%s", env);
    return 0;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!w || !w->lua_dir[0])
    return -1;
  snprintf(out, outlen, "%s/../panel", w->lua_dir);
  return 0;
}

static void panel_work(cpx_lua_job_t *job) {
  panel_read_t *p = (panel_read_t *)job;
  struct stat st;
  size_t got = 0;
  int fd = open(p->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    p->err = errno;
    return;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    p->err = ENOENT;
    goto done;
  }
  if ((uint64_t)st.st_size > PANEL_MAX_FILE) {
    p->err = EFBIG;
    goto done;
  }
  p->data = malloc((size_t)st.st_size + 1);
  if (!p->data) {
    p->err = ENOMEM;
    goto done;
  }
  while (got < (size_t)st.st_size) {
    ssize_t k = read(fd, p->data + got, (size_t)st.st_size - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      p->err = k < 0 ? errno : EIO; /* shrank while read */
      goto done;
    }
    got += (size_t)k;
  }
  p->len = got;
  p->mtime = (double)st.st_mtime;
done:
  close(fd);
}

static int panel_push(lua_State *L, cpx_lua_job_t *job) {
  panel_read_t *p = (panel_read_t *)job;
  if (p->err != 0) {
    lua_pushnil(L);
    if (p->err == ENOENT || p->err == ELOOP || p->err == ENOTDIR)
      lua_pushliteral(L, "not found");
    else
      lua_pushstring(L, strerror(p->err));
    return 2;
  }
  lua_pushlstring(L, p->data, p->len);
  lua_pushnumber(L, p->mtime);
  return 2;
}

static void panel_release(cpx_lua_job_t *job) {
  panel_read_t *p = (panel_read_t *)job;
  free(p->data);
  free(p);
}

/* cpx.panel.read(name) -> bytes, mtime | nil, err. Yields in the request
 * phase (reads in the threadpool); reads in place elsewhere. */
static int l_panel_read(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char dir[PATH_MAX + 16];
  panel_read_t *p;
  int n;

  if (!cpx_panel_name_ok(name)) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  if (panel_dir(L, dir, sizeof(dir)) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "no panel directory");
    return 2;
  }
  p = calloc(1, sizeof(*p));
  if (!p)
    return luaL_error(L, "out of memory");
  n = snprintf(p->path, sizeof(p->path), "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof(p->path)) {
    panel_release(&p->job);
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  p->job.work = panel_work;
  p->job.push = panel_push;
  p->job.done = panel_release;
  return cpx_lua_await(L, &p->job);
}

/* cpx.panel.dir() -> the directory cpx.panel.read reads, or nil. */
static int l_panel_dir(lua_State *L) {
  char dir[PATH_MAX + 16], real[PATH_MAX];
  if (panel_dir(L, dir, sizeof(dir)) != 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushstring(L, realpath(dir, real) ? real : dir);
  return 1;
}

void cpx_panel_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"read", l_panel_read}, {"dir", l_panel_dir}, {NULL, NULL}};
  cpx_lua_register_table(L, "panel", fns);
}
