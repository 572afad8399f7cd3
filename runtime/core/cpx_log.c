/* cpx_log.c: see cpx_log.h. */
#include "cpx_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cpx.h"

static int log_level = CPX_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void cpx_log_set_level(int level) {
  if (level >= CPX_LOG_DEBUG && level <= CPX_LOG_ERROR)
    log_level = level;
}

int cpx_log_get_level(void) {
  return log_level;
}

int cpx_log_level_from_name(const char *name) {
  for (int i = 0; i < 4; i++)
    if (strcasecmp(name, level_names[i]) == 0)
      return i;
  if (strcasecmp(name, "warning") == 0)
    return CPX_LOG_WARN;
  return -1;
}

const char *cpx_log_level_name(int level) {
  if (level < 0 || level > 3)
    return "info";
  return level_names[level];
}

/* The timestamp only changes once a second: format it once per second
 * (per thread) instead of once per line. */
static size_t stamp(char *out, size_t outlen) {
  static __thread time_t last;
  static __thread char cached[32];
  static __thread size_t cached_len;
  time_t now = time(NULL);
  if (now != last || !cached_len) {
    struct tm tm;
    localtime_r(&now, &tm);
    cached_len = strftime(cached, sizeof(cached), "[%Y-%m-%d %H:%M:%S] ", &tm);
    last = now;
  }
  if (cached_len >= outlen)
    return 0;
  memcpy(out, cached, cached_len);
  return cached_len;
}

void cpx_log(int level, const char *rid, const char *fmt, ...) {
  char line[4096];
  size_t n;
  va_list ap;

  if (level < log_level)
    return;
  n = stamp(line, sizeof(line));
  n += (size_t)snprintf(line + n, sizeof(line) - n, "[%s] [%s] ",
                        rid ? rid : "--------", cpx_log_level_name(level));
  va_start(ap, fmt);
  if (n < sizeof(line))
    n += (size_t)vsnprintf(line + n, sizeof(line) - n, fmt, ap);
  va_end(ap);
  if (n >= sizeof(line) - 1)
    n = sizeof(line) - 2;
  line[n++] = '\n';
  /* stdio locks the stream per call, so lines from several threads never
   * interleave; cpx_log_flush (on a timer, at errors and at exit) pushes
   * the buffer out so logging costs no syscall per request. */
  fwrite(line, 1, n, stderr);
  if (level >= CPX_LOG_WARN)
    fflush(stderr);
}

void cpx_log_buffered(void) {
  static char buf[65536];
  setvbuf(stderr, buf, _IOFBF, sizeof(buf));
}

void cpx_log_flush(void) {
  fflush(stderr);
}

/* "api-key" and "value": the management API deletes keys by value
 * (DELETE /v0/management/gemini-api-key?api-key=..., /api-keys?value=...).
 * "code": an OAuth redirect's authorization code (the callbacks and the
 * is_webui forwarders log their URL). */
static int is_secret_param(const char *p, size_t n) {
  static const char *names[] = {
      "key",     "auth_token", "access_token", "api_key", "token",
      "api-key", "value",      "password",     "secret",  "code"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strlen(names[i]) == n && strncasecmp(p, names[i], n) == 0)
      return 1;
  return 0;
}

char *cpx_log_redact_query(const char *target, size_t len, char *out,
                           size_t outlen) {
  size_t o = 0, i = 0;
  int in_query = 0;

  if (outlen == 0)
    return out;
  while (i < len && o + 4 < outlen) {
    char c = target[i];
    if (!in_query) {
      out[o++] = c;
      i++;
      if (c == '?')
        in_query = 1;
      continue;
    }
    /* At the start of a name=value pair. */
    size_t ns = i;
    while (i < len && target[i] != '=' && target[i] != '&')
      i++;
    size_t nn = i - ns;
    if (o + nn + 5 >= outlen)
      break;
    memcpy(out + o, target + ns, nn);
    o += nn;
    if (i < len && target[i] == '=') {
      size_t vs = ++i;
      while (i < len && target[i] != '&')
        i++;
      out[o++] = '=';
      if (is_secret_param(target + ns, nn)) {
        memcpy(out + o, "***", 3);
        o += 3;
      } else {
        size_t vn = i - vs;
        if (o + vn + 2 >= outlen)
          vn = outlen - o - 2;
        memcpy(out + o, target + vs, vn);
        o += vn;
      }
    }
    if (i < len && target[i] == '&') {
      out[o++] = '&';
      i++;
    }
  }
  out[o] = '\0';
  return out;
}

const char *cpx_strerror(int code) {
  switch (code) {
  case CPX_OK:
    return "ok";
  case CPX_EAGAIN:
    return "not ready";
  case CPX_ELIMIT:
    return "limit exceeded";
  case CPX_EPARSE:
    return "malformed input";
  case CPX_ECLOSED:
    return "closed";
  case CPX_ETIMEOUT:
    return "timed out";
  case CPX_ESTATE:
    return "invalid state";
  case CPX_ENOMEM:
    return "out of memory";
  case CPX_EINVAL:
    return "invalid argument";
  case CPX_EIO:
    return "i/o error";
  case CPX_ESCRIPT:
    return "script error";
  default:
    return code < 0 && code > -4096 ? strerror(-code) : "unknown error";
  }
}

/* ---- logging-to-file ----------------------------------------------------- */

static int saved_stderr = -1; /* the original fd 2 while logging to a file */
/* Bounded below PATH_MAX so the file names built from it always fit. */
static char log_dir[PATH_MAX - 64];
static size_t log_cap;

/* Points fd 2 at path (append). stdio's buffer is flushed first, so no line
 * is split between the two targets. */
static int point_stderr(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  fflush(stderr);
  if (dup2(fd, 2) < 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  close(fd);
  return 0;
}

int cpx_log_to_file(const char *dir, size_t max_total) {
  char path[PATH_MAX];
  int rc;

  log_cap = max_total;
  if (!dir) {
    if (saved_stderr >= 0) {
      fflush(stderr);
      dup2(saved_stderr, 2);
      close(saved_stderr);
      saved_stderr = -1;
      log_dir[0] = '\0';
    }
    return 0;
  }
  if (saved_stderr >= 0 && strcmp(dir, log_dir) == 0)
    return 0;
  if (strlen(dir) >= sizeof(log_dir))
    return CPX_ELIMIT;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return -errno;
  if (snprintf(path, sizeof(path), "%s/main.log", dir) >= (int)sizeof(path))
    return CPX_ELIMIT;
  if (saved_stderr < 0 && (saved_stderr = fcntl(2, F_DUPFD_CLOEXEC, 3)) < 0)
    return -errno;
  if ((rc = point_stderr(path)) != 0)
    return rc;
  snprintf(log_dir, sizeof(log_dir), "%s", dir);
  return 0;
}

typedef struct {
  char name[256];
  off_t size;
  time_t mtime;
} log_file_t;

static int by_mtime(const void *a, const void *b) {
  const log_file_t *x = a, *y = b;
  if (x->mtime != y->mtime)
    return x->mtime < y->mtime ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Deletes the oldest rotated *.log files while the total is over the cap. */
static void enforce_cap(void) {
  DIR *d;
  struct dirent *e;
  log_file_t *files = NULL;
  size_t n = 0, cap = 0;
  unsigned long long total = 0;

  if (log_cap == 0 || !(d = opendir(log_dir)))
    return;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    struct stat st;
    char p[PATH_MAX];
    if (len < 5 || strcmp(e->d_name + len - 4, ".log") != 0 ||
        len >= sizeof(files[0].name))
      continue;
    if (snprintf(p, sizeof(p), "%s/%s", log_dir, e->d_name) >= (int)sizeof(p))
      continue;
    if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    total += (unsigned long long)st.st_size;
    if (strcmp(e->d_name, "main.log") == 0)
      continue; /* the live file is never deleted */
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      log_file_t *f = realloc(files, nc * sizeof(*f));
      if (!f)
        break;
      files = f;
      cap = nc;
    }
    snprintf(files[n].name, sizeof(files[n].name), "%s", e->d_name);
    files[n].size = st.st_size;
    files[n].mtime = st.st_mtime;
    n++;
  }
  closedir(d);
  qsort(files, n, sizeof(*files), by_mtime);
  for (size_t i = 0; i < n && total > log_cap; i++) {
    char p[PATH_MAX];
    if (snprintf(p, sizeof(p), "%s/%s", log_dir, files[i].name) >=
        (int)sizeof(p))
      continue;
    if (unlink(p) == 0)
      total -= (unsigned long long)files[i].size;
  }
  free(files);
}

void cpx_log_rotate_check(void) {
  struct stat st;
  char cur[PATH_MAX], old[PATH_MAX];

  if (saved_stderr < 0 || fstat(2, &st) != 0 ||
      st.st_size < CPX_LOG_ROTATE_BYTES)
    return;
  if (snprintf(cur, sizeof(cur), "%s/main.log", log_dir) >= (int)sizeof(cur) ||
      snprintf(old, sizeof(old), "%s/main-%lld.log", log_dir,
               (long long)time(NULL)) >= (int)sizeof(old))
    return;
  fflush(stderr);
  if (rename(cur, old) == 0)
    point_stderr(cur);
  enforce_cap();
}

int cpx_log_clear_dir(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  char p[PATH_MAX];

  if (!d)
    return -errno;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len < 10 || strncmp(e->d_name, "main-", 5) != 0 ||
        strcmp(e->d_name + len - 4, ".log") != 0)
      continue;
    if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= (int)sizeof(p))
      continue;
    if (unlink(p) == 0)
      n++;
  }
  closedir(d);
  if (snprintf(p, sizeof(p), "%s/main.log", dir) >= (int)sizeof(p))
    return n;
  /* In place: fd 2 (O_APPEND) goes on writing at the new end. */
  if (truncate(p, 0) == 0)
    n++;
  return n;
}
