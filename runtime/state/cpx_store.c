/* cpx_store.c: the credential directory. See cpx_store.h. */
#include "cpx_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <yajl/yajl_tree.h>

#include "cpx_log.h"

#define MAX_CRED_BYTES (1u << 20) /* a credential is a few KiB */
#define DEBOUNCE_MS 100

/* A file as seen by the last scan: loaded (text != NULL) or rejected. The
 * stat signature lets a rescan skip unchanged files and report a bad file
 * once, not on every scan. name and text are owned. */
typedef struct {
  char *name;
  char *text;
  size_t len;
  char type[64];
  int disabled;
  ino_t ino;
  off_t size;
  struct timespec mtim;
} file_t;

/* Owns dir, files and the watcher (thread, loop and handles). */
struct cpx_store_s {
  char dir[PATH_MAX];
  pthread_mutex_t mu;
  file_t *files; /* sorted by name */
  size_t nfiles;
  uint64_t version;
  cpx_store_report_fn report;
  void *report_ud;
  /* watcher */
  int watching;
  pthread_t thread;
  uv_loop_t loop;
  uv_fs_event_t ev;
  uv_timer_t debounce;
  uv_async_t stop;
};

/* ---- paths --------------------------------------------------------------- */

int cpx_store_expand_path(const char *in, char *out, size_t outlen) {
  const char *home = getenv("HOME");
  int n;
  if (in[0] == '~' && (in[1] == '\0' || in[1] == '/') && home && home[0])
    n = snprintf(out, outlen, "%s%s", home, in + 1);
  else
    n = snprintf(out, outlen, "%s", in);
  return n < 0 || (size_t)n >= outlen ? CPX_ELIMIT : 0;
}

static int is_cred_name(const char *name) {
  size_t n = strlen(name);
  return name[0] != '.' && n > 5 && strcmp(name + n - 5, ".json") == 0;
}

/* A temporary of ours: ".<name>.tmp.XXXXXX". */
static int is_our_tmp(const char *name) {
  return name[0] == '.' && strstr(name, ".json.tmp.") != NULL;
}

static void default_report(void *ud, const char *name, const char *reason) {
  const char *dir = ud;
  cpx_log(CPX_LOG_WARN, NULL, "auth-dir: %s/%s skipped: %s", dir, name, reason);
}

/* ---- loading ------------------------------------------------------------- */

static void file_free(file_t *f) {
  free(f->name);
  free(f->text);
}

static int same_stat(const file_t *f, const struct stat *st) {
  return f->ino == st->st_ino && f->size == st->st_size &&
         f->mtim.tv_sec == st->st_mtim.tv_sec &&
         f->mtim.tv_nsec == st->st_mtim.tv_nsec;
}

/* Reads and checks one file into f (f->name set). Returns 0 when loaded,
 * or a negative code with the reason in why (f->text stays NULL). */
static int load_file(int dfd, file_t *f, const struct stat *st, char *why,
                     size_t whylen) {
  char *buf, err[256];
  yajl_val root, v;
  const char *type_path[] = {"type", NULL};
  const char *dis_path[] = {"disabled", NULL};
  size_t got = 0;
  int fd;

  if (!S_ISREG(st->st_mode)) {
    snprintf(why, whylen, "not a regular file");
    return CPX_EINVAL;
  }
  if (geteuid() != 0 && st->st_uid != geteuid()) {
    snprintf(why, whylen, "owned by another user (uid %u)",
             (unsigned)st->st_uid);
    return CPX_EINVAL;
  }
  if (st->st_mode & 077) {
    snprintf(why, whylen,
             "readable or writable by group or others (mode %03o); "
             "chmod 600 it",
             (unsigned)(st->st_mode & 0777));
    return CPX_EINVAL;
  }
  if (st->st_size > (off_t)MAX_CRED_BYTES) {
    snprintf(why, whylen, "larger than %u bytes", MAX_CRED_BYTES);
    return CPX_ELIMIT;
  }
  fd = openat(dfd, f->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    snprintf(why, whylen, "cannot open: %s", strerror(errno));
    return -errno;
  }
  buf = malloc((size_t)st->st_size + 1);
  if (!buf) {
    close(fd);
    return CPX_ENOMEM;
  }
  while (got < (size_t)st->st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st->st_size - got);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  err[0] = '\0';
  root = yajl_tree_parse(buf, err, sizeof(err));
  if (!root || !YAJL_IS_OBJECT(root)) {
    char *nl;
    if ((nl = strchr(err, '\n')))
      *nl = '\0';
    snprintf(why, whylen, "%s", root ? "not a JSON object" : "malformed JSON");
    if (!root && err[0]) {
      size_t used = strlen(why);
      snprintf(why + used, whylen - used, " (%s)", err);
    }
    if (root)
      yajl_tree_free(root);
    free(buf);
    return CPX_EPARSE;
  }
  v = yajl_tree_get(root, type_path, yajl_t_string);
  snprintf(f->type, sizeof(f->type), "%s", v ? YAJL_GET_STRING(v) : "");
  v = yajl_tree_get(root, dis_path, yajl_t_any);
  f->disabled = v && YAJL_IS_TRUE(v);
  yajl_tree_free(root);
  f->text = buf;
  f->len = got;
  return 0;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(((const file_t *)a)->name, ((const file_t *)b)->name);
}

static const file_t *find_old(const cpx_store_t *s, const char *name) {
  file_t key;
  if (!s->nfiles)
    return NULL; /* bsearch must not see a NULL base */
  key.name = (char *)name;
  return bsearch(&key, s->files, s->nfiles, sizeof(file_t), name_cmp);
}

/* Builds the new file list outside the lock (only the scanning thread
 * mutates files, and scans are serialised by scan_mu), then swaps it in. */
static pthread_mutex_t scan_mu = PTHREAD_MUTEX_INITIALIZER;

static int scan(cpx_store_t *s) {
  DIR *d;
  struct dirent *de;
  file_t *list = NULL, *old_files;
  size_t n = 0, cap = 0, old_n;
  int dfd, changed = 0;

  pthread_mutex_lock(&scan_mu);
  d = opendir(s->dir);
  if (!d) {
    int rc = -errno;
    pthread_mutex_unlock(&scan_mu);
    return rc;
  }
  dfd = dirfd(d);
  while ((de = readdir(d))) {
    struct stat st;
    const file_t *old;
    file_t f;
    char why[512];

    if (!is_cred_name(de->d_name))
      continue;
    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      continue; /* gone since readdir */
    memset(&f, 0, sizeof(f));
    old = find_old(s, de->d_name);
    if (old && same_stat(old, &st)) {
      f = *old;
      f.name = strdup(old->name);
      f.text = NULL;
      if (old->text && !(f.text = malloc(old->len + 1))) {
        free(f.name);
        continue;
      }
      if (old->text)
        memcpy(f.text, old->text, old->len + 1);
    } else {
      changed = 1;
      f.name = strdup(de->d_name);
      f.ino = st.st_ino;
      f.size = st.st_size;
      f.mtim = st.st_mtim;
      if (f.name && load_file(dfd, &f, &st, why, sizeof(why)) != 0)
        s->report(s->report_ud, de->d_name, why);
    }
    if (!f.name) {
      free(f.text);
      continue;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      file_t *nl = realloc(list, ncap * sizeof(*nl));
      if (!nl) {
        file_free(&f);
        continue;
      }
      list = nl;
      cap = ncap;
    }
    list[n++] = f;
  }
  closedir(d);
  if (n > 1)
    qsort(list, n, sizeof(*list), name_cmp);
  if (n != s->nfiles)
    changed = 1;
  for (size_t i = 0; !changed && i < n; i++)
    if (strcmp(list[i].name, s->files[i].name) != 0)
      changed = 1;
  pthread_mutex_lock(&s->mu);
  old_files = s->files;
  old_n = s->nfiles;
  s->files = list;
  s->nfiles = n;
  if (changed)
    s->version++;
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 0; i < old_n; i++)
    file_free(&old_files[i]);
  free(old_files);
  pthread_mutex_unlock(&scan_mu);
  return changed;
}

int cpx_store_rescan(cpx_store_t *s) {
  return scan(s);
}

/* ---- watcher thread ------------------------------------------------------ */

static void on_debounce(uv_timer_t *t) {
  cpx_store_t *s = t->data;
  int rc = scan(s);
  if (rc > 0)
    cpx_log(CPX_LOG_INFO, NULL, "auth-dir: %s changed (version %llu)", s->dir,
            (unsigned long long)cpx_store_version(s));
}

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events,
                         int status) {
  cpx_store_t *s = h->data;
  CPX_UNUSED(events);
  CPX_UNUSED(filename);
  if (status < 0)
    return;
  /* Editors write, rename and chmod in bursts: one scan after the burst. */
  uv_timer_start(&s->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_close_noop(uv_handle_t *h) {
  CPX_UNUSED(h);
}

static void on_stop(uv_async_t *a) {
  cpx_store_t *s = a->data;
  uv_close((uv_handle_t *)&s->ev, on_close_noop);
  uv_close((uv_handle_t *)&s->debounce, on_close_noop);
  uv_close((uv_handle_t *)&s->stop, on_close_noop);
}

static void *watch_main(void *arg) {
  cpx_store_t *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return NULL;
}

static int start_watch(cpx_store_t *s) {
  int rc = uv_loop_init(&s->loop);
  if (rc != 0)
    return rc;
  uv_fs_event_init(&s->loop, &s->ev);
  uv_timer_init(&s->loop, &s->debounce);
  uv_async_init(&s->loop, &s->stop, on_stop);
  s->ev.data = s->debounce.data = s->stop.data = s;
  rc = uv_fs_event_start(&s->ev, on_dir_event, s->dir, 0);
  if (rc == 0 && pthread_create(&s->thread, NULL, watch_main, s) != 0)
    rc = CPX_ENOMEM;
  if (rc != 0) {
    uv_close((uv_handle_t *)&s->ev, on_close_noop);
    uv_close((uv_handle_t *)&s->debounce, on_close_noop);
    uv_close((uv_handle_t *)&s->stop, on_close_noop);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    return rc;
  }
  s->watching = 1;
  return 0;
}

static void stop_watch(cpx_store_t *s) {
  if (!s->watching)
    return;
  uv_async_send(&s->stop);
  pthread_join(s->thread, NULL);
  uv_loop_close(&s->loop);
  s->watching = 0;
}

/* ---- open / close -------------------------------------------------------- */

/* Temporaries left by a process killed mid-write. Only old ones: another
 * process sharing the directory may be writing one right now, and deleting
 * it would fail that write's rename (a lost token rotation). */
#define STALE_TMP_SECONDS 60

static void remove_stale_tmp(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *de;
  struct stat st;
  time_t now = time(NULL);
  if (!d)
    return;
  while ((de = readdir(d)))
    if (is_our_tmp(de->d_name) &&
        fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        now - st.st_mtime > STALE_TMP_SECONDS)
      unlinkat(dirfd(d), de->d_name, 0);
  closedir(d);
}

int cpx_store_open(cpx_store_t **out, const char *dir, int watch,
                   cpx_store_report_fn report, void *ud) {
  cpx_store_t *s;
  struct stat st;
  int rc;

  if (!dir || !dir[0])
    return CPX_EINVAL;
  s = calloc(1, sizeof(*s));
  if (!s)
    return CPX_ENOMEM;
  if (cpx_store_expand_path(dir, s->dir, sizeof(s->dir)) != 0) {
    free(s);
    return CPX_ELIMIT;
  }
  if (stat(s->dir, &st) != 0) {
    if (mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
      rc = -errno;
      free(s);
      return rc;
    }
  } else if (!S_ISDIR(st.st_mode)) {
    free(s);
    return -ENOTDIR;
  }
  pthread_mutex_init(&s->mu, NULL);
  s->report = report ? report : default_report;
  s->report_ud = report ? ud : s->dir;
  remove_stale_tmp(s->dir);
  rc = scan(s);
  if (rc < 0) {
    pthread_mutex_destroy(&s->mu);
    free(s);
    return rc;
  }
  s->version = 1;
  if (watch && (rc = start_watch(s)) != 0)
    cpx_log(CPX_LOG_WARN, NULL,
            "auth-dir: cannot watch %s (%s): changes need a restart", s->dir,
            cpx_strerror(rc));
  *out = s;
  return 0;
}

void cpx_store_close(cpx_store_t *s) {
  if (!s)
    return;
  stop_watch(s);
  for (size_t i = 0; i < s->nfiles; i++)
    file_free(&s->files[i]);
  free(s->files);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Old global stores are stopped but not freed: another worker may still be
 * reading one (they are few: one per auth-dir change). */
static pthread_mutex_t global_mu = PTHREAD_MUTEX_INITIALIZER;
static cpx_store_t *global_store;

cpx_store_t *cpx_store_global(const char *dir) {
  char path[PATH_MAX];
  cpx_store_t *s = NULL;
  if (cpx_store_expand_path(dir, path, sizeof(path)) != 0)
    return NULL;
  pthread_mutex_lock(&global_mu);
  if (global_store && strcmp(global_store->dir, path) == 0) {
    s = global_store;
  } else if (cpx_store_open(&s, path, 1, NULL, NULL) == 0) {
    if (global_store)
      stop_watch(global_store);
    global_store = s;
  } else {
    s = NULL;
  }
  pthread_mutex_unlock(&global_mu);
  return s;
}

cpx_store_t *cpx_store_current(void) {
  cpx_store_t *s;
  pthread_mutex_lock(&global_mu);
  s = global_store;
  pthread_mutex_unlock(&global_mu);
  return s;
}

const char *cpx_store_dir(const cpx_store_t *s) {
  return s->dir;
}

uint64_t cpx_store_version(cpx_store_t *s) {
  uint64_t v;
  pthread_mutex_lock(&s->mu);
  v = s->version;
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* ---- snapshots ----------------------------------------------------------- */

void cpx_store_snapshot_free(cpx_store_entry_t *e, size_t n) {
  for (size_t i = 0; e && i < n; i++) {
    free(e[i].name);
    free(e[i].text);
    free(e[i].type);
  }
  free(e);
}

int cpx_store_snapshot(cpx_store_t *s, cpx_store_entry_t **out, size_t *n) {
  cpx_store_entry_t *e;
  size_t k = 0;
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  e = calloc(s->nfiles ? s->nfiles : 1, sizeof(*e));
  if (!e) {
    pthread_mutex_unlock(&s->mu);
    return CPX_ENOMEM;
  }
  for (size_t i = 0; i < s->nfiles; i++) {
    const file_t *f = &s->files[i];
    if (!f->text)
      continue; /* rejected */
    e[k].name = strdup(f->name);
    e[k].type = strdup(f->type);
    e[k].text = malloc(f->len + 1);
    if (!e[k].name || !e[k].type || !e[k].text) {
      rc = CPX_ENOMEM;
      k++;
      break;
    }
    memcpy(e[k].text, f->text, f->len + 1);
    e[k].len = f->len;
    e[k].disabled = f->disabled;
    e[k].mtime = (int64_t)f->mtim.tv_sec;
    k++;
  }
  pthread_mutex_unlock(&s->mu);
  if (rc != 0) {
    cpx_store_snapshot_free(e, k);
    return rc;
  }
  *out = e;
  *n = k;
  return 0;
}

/* ---- writes -------------------------------------------------------------- */

static int safe_name(const char *name) {
  return name && is_cred_name(name) && !strchr(name, '/') &&
         strlen(name) < NAME_MAX - 16;
}

/* The runtime's own files in the directory: ".<name>.json", which the
 * credential scan skips (cpx_pool_file.c keeps cooldowns in one). */
static int own_name(const char *name) {
  size_t n = name ? strlen(name) : 0;
  return n > 6 && name[0] == '.' && name[1] != '.' && !strchr(name, '/') &&
         strcmp(name + n - 5, ".json") == 0 && n < NAME_MAX - 16;
}

int cpx_store_write_file(const char *dir, const char *name, const char *data,
                         size_t len) {
  if (!safe_name(name) && !own_name(name))
    return CPX_EINVAL;
  return cpx_write_atomic(dir, name, data, len, 0600);
}

int cpx_write_atomic(const char *dir, const char *name, const char *data,
                     size_t len, unsigned mode) {
  char tmp[PATH_MAX], tmpbase[NAME_MAX + 1];
  const char *base;
  int fd, dfd, rc = 0;
  size_t off = 0;

  if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 ||
      strcmp(name, "..") == 0)
    return CPX_EINVAL;
  if (snprintf(tmp, sizeof(tmp), "%s/.%s.tmp.XXXXXX", dir, name) >=
      (int)sizeof(tmp))
    return CPX_ELIMIT;
  dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return -errno;
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = -errno;
    close(dfd);
    return rc;
  }
  base = strrchr(tmp, '/') + 1;
  snprintf(tmpbase, sizeof(tmpbase), "%s", base);
  if (fchmod(fd, (mode_t)mode) != 0)
    rc = -errno;
  while (rc == 0 && off < len) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      rc = -errno;
    } else {
      off += (size_t)w;
    }
  }
  /* The data must be durable before the name points at it. */
  if (rc == 0 && fsync(fd) != 0)
    rc = -errno;
  if (close(fd) != 0 && rc == 0)
    rc = -errno;
  if (rc == 0 && renameat(dfd, tmpbase, dfd, name) != 0)
    rc = -errno;
  if (rc != 0)
    unlinkat(dfd, tmpbase, 0);
  else if (fsync(dfd) != 0) /* and the rename itself */
    rc = -errno;
  close(dfd);
  return rc;
}

int cpx_store_write(cpx_store_t *s, const char *name, const char *data,
                    size_t len) {
  int rc;
  if (!safe_name(name))
    return CPX_EINVAL; /* credential files only */
  rc = cpx_store_write_file(s->dir, name, data, len);
  if (rc == 0)
    scan(s);
  return rc;
}

int cpx_store_remove(cpx_store_t *s, const char *name) {
  char path[PATH_MAX];
  if (!safe_name(name))
    return CPX_EINVAL;
  if (snprintf(path, sizeof(path), "%s/%s", s->dir, name) >= (int)sizeof(path))
    return CPX_ELIMIT;
  if (unlink(path) != 0)
    return -errno;
  scan(s);
  return 0;
}
