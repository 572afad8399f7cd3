/* cpx_reqlog.c: the file side of the per-request logs (lua/rt/reqlog.lua
 * builds the text, already redacted; cpx.reqlog is
 * runtime/lua/cpx_reqlog_lua.c).
 *
 * Writes are fire-and-forget jobs in libuv's threadpool: the record
 * subscriber that asks for one must not yield, and a request must never wait
 * for its own log. They are bounded process-wide (jobs and bytes waiting);
 * past the bound a log is dropped and the caller told so. Listing and
 * reading are blocking calls the binding runs in the threadpool while the
 * calling coroutine waits (cpx_lua_await). */
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

#include <uv.h>

#include "cpx.h"
#include "cpx_store.h"

#define REQLOG_MAX_JOBS 64                  /* writes waiting, process */
#define REQLOG_MAX_BYTES ((size_t)64 << 20) /* their text, process */

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

static int entry_newer_first(const void *a, const void *b) {
  const cpx_reqlog_entry_t *x = a, *y = b;
  if (x->mtime != y->mtime)
    return x->mtime < y->mtime ? 1 : -1;
  return strcmp(y->name, x->name);
}

/* Regular files of dir named prefix*.log (suffix: and ending so), newest
 * first. *out is malloc'd (caller frees); returns the count or -errno. */
static int scan(const char *dir, const char *prefix, const char *suffix,
                cpx_reqlog_entry_t **out) {
  DIR *d = opendir(dir);
  struct dirent *de;
  cpx_reqlog_entry_t *v = NULL;
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
      cpx_reqlog_entry_t *nv = realloc(v, (size_t)nc * sizeof(*v));
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
  cpx_reqlog_entry_t *v;
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

int cpx_reqlog_write(uv_loop_t *loop, const char *dir, const char *name,
                     const char *text, size_t len, const char *prune,
                     int keep) {
  wjob_t *j;
  if (!prune)
    prune = "";
  if (!cpx_reqlog_name_ok(name) || strlen(dir) >= sizeof(j->dir) ||
      strlen(prune) >= sizeof(j->prune))
    return CPX_EINVAL;
  if (len > CPX_REQLOG_MAX_FILE)
    return CPX_ELIMIT;
  /* both counters are taken first and given back on refusal */
  if ((atomic_fetch_add(&pending_jobs, 1) >= REQLOG_MAX_JOBS) |
      (atomic_fetch_add(&pending_bytes, len) + len > REQLOG_MAX_BYTES)) {
    atomic_fetch_sub(&pending_jobs, 1);
    atomic_fetch_sub(&pending_bytes, len);
    return CPX_EAGAIN;
  }
  j = calloc(1, sizeof(*j));
  if (j)
    j->text = malloc(len ? len : 1);
  if (!j || !j->text) {
    if (j)
      free(j);
    atomic_fetch_sub(&pending_jobs, 1);
    atomic_fetch_sub(&pending_bytes, len);
    return CPX_ENOMEM;
  }
  memcpy(j->text, text, len);
  j->len = len;
  snprintf(j->dir, sizeof(j->dir), "%s", dir);
  snprintf(j->name, sizeof(j->name), "%s", name);
  snprintf(j->prune, sizeof(j->prune), "%s", prune);
  j->keep = keep;
  if (loop && uv_queue_work(loop, &j->req, write_work, write_after) == 0)
    return 0;
  /* no loop (busted, cliproxy check): write now */
  write_work(&j->req);
  write_after(&j->req, 0);
  return 0;
}

void cpx_reqlog_pending(int *jobs, size_t *bytes) {
  *jobs = atomic_load(&pending_jobs);
  *bytes = atomic_load(&pending_bytes);
}

/* ---- list, read, find: blocking, for a threadpool job ------------------ */

int cpx_reqlog_list(const char *dir, const char *prefix,
                    cpx_reqlog_entry_t **out) {
  return scan(dir, prefix, NULL, out);
}

int cpx_reqlog_read(const char *dir, const char *name, char **out,
                    size_t *len) {
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
      (size_t)st.st_size > CPX_REQLOG_MAX_FILE) {
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

int cpx_reqlog_find(const char *dir, const char *suffix, char *name,
                    size_t namelen, char **out, size_t *len) {
  cpx_reqlog_entry_t *v;
  int n = scan(dir, "", suffix, &v);
  if (n <= 0) {
    free(v);
    return n < 0 ? n : -ENOENT;
  }
  snprintf(name, namelen, "%s", v[0].name);
  free(v);
  return cpx_reqlog_read(dir, name, out, len);
}
