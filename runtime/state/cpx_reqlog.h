/* cpx_reqlog.h: the per-request log files (lua/rt/reqlog.lua decides what
 * goes in them; this writes, lists and reads them off the event loop). */
#ifndef CPX_REQLOG_H
#define CPX_REQLOG_H

#include <stddef.h>

#include <uv.h>

#define CPX_REQLOG_MAX_FILE ((size_t)16 << 20) /* one file written or read */
#define CPX_REQLOG_MAX_DIR 4096  /* a directory's path, with its NUL */
#define CPX_REQLOG_MAX_PREFIX 64 /* a prune prefix, with its NUL */

/* A file of a directory that a listing reports. */
typedef struct {
  char name[256];
  long long size;
  double mtime; /* wall seconds */
} cpx_reqlog_entry_t;

/* 1 for a log file name the management API may hand out: a plain name of
 * [A-Za-z0-9_.-], not starting with '.', ending in ".log", < 256 bytes. */
int cpx_reqlog_name_ok(const char *name);

/* Deletes the oldest files of dir named prefix*.log while more than keep
 * are there (keep 0: none kept). Returns how many were deleted or a
 * negative error. Blocking: call it on a pool thread. */
int cpx_reqlog_prune(const char *dir, const char *prefix, int keep);

/* Queues one log file: dir is created 0700, the file written atomically
 * with mode 0600 (in loop's threadpool; no loop: now), then the oldest
 * prune*.log files (prune NULL or "": none) deleted beyond keep. Bounded
 * process-wide: CPX_EAGAIN when 64 writes or 64 MiB wait already,
 * CPX_ELIMIT for a text over CPX_REQLOG_MAX_FILE, CPX_EINVAL for a name
 * cpx_reqlog_name_ok refuses or a path too long, CPX_ENOMEM. The text is
 * copied. */
int cpx_reqlog_write(uv_loop_t *loop, const char *dir, const char *name,
                     const char *text, size_t len, const char *prune, int keep);
/* Writes and bytes waiting (tests, metrics). */
void cpx_reqlog_pending(int *jobs, size_t *bytes);

/* Blocking (threadpool). list: the regular files of dir named
 * prefix*.log, newest first, into a malloc'd *out (caller frees); returns
 * the count or -errno. read: dir/name (no symlink, a regular file of at
 * most CPX_REQLOG_MAX_FILE) into a malloc'd *out; 0 or -errno. find: the
 * newest file whose name ends in suffix, its name into name[namelen];
 * -ENOENT when there is none. */
int cpx_reqlog_list(const char *dir, const char *prefix,
                    cpx_reqlog_entry_t **out);
int cpx_reqlog_read(const char *dir, const char *name, char **out, size_t *len);
int cpx_reqlog_find(const char *dir, const char *suffix, char *name,
                    size_t namelen, char **out, size_t *len);

#endif /* CPX_REQLOG_H */
