/* cpx_store.h: the credential directory (`auth-dir`).
 *
 * Every `*.json` file directly in the directory is one credential in
 * CLIProxyAPI's format. The store keeps each file's text after checking
 * that it is a JSON object that is safe to read (a regular file, owned by
 * us, not group/world-readable: the ssh "unprotected private key" rule);
 * anything else is reported with the file's name and skipped, never fatal.
 *
 * A watcher thread with its own libuv loop watches the directory
 * (uv_fs_event on the directory, so editors that write a temporary file
 * and rename it are seen), debounces bursts, rescans, and bumps a version
 * counter when anything changed. Readers (every worker's Lua) compare the
 * version per request and take a snapshot when it moved, so the store is
 * independent of VM generations and worker loops.
 *
 * Writes go to a temporary file in the same directory (0600, O_EXCL),
 * fsync, rename over the target, fsync the directory: a crash never
 * leaves a half-written credential. Stale temporaries are removed at open.
 */
#ifndef CPX_STORE_H
#define CPX_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cpx.h"

typedef struct cpx_store_s cpx_store_t;

/* One loaded credential. Every pointer is owned by the snapshot that holds
 * the entry (cpx_store_snapshot_free). */
typedef struct {
  char *name; /* file name, e.g. "codex-me@example.com.json" */
  char *text; /* the file's JSON text */
  size_t len;
  char *type; /* the "type" field, "" when absent */
  int disabled;
  int64_t mtime; /* seconds */
} cpx_store_entry_t;

/* Called for every file that is skipped (name, reason); may be NULL. The
 * default reporter logs a warning. Runs on the scanning thread. */
typedef void (*cpx_store_report_fn)(void *ud, const char *name,
                                    const char *reason);

/* Expands a leading "~" or "~/" with $HOME. Returns 0 or CPX_ELIMIT. */
int cpx_store_expand_path(const char *in, char *out, size_t outlen);

/* Opens (and creates, 0700, when missing) the directory and loads it.
 * watch: start the watcher thread. Returns 0 or a negative code. */
int cpx_store_open(cpx_store_t **out, const char *dir, int watch,
                   cpx_store_report_fn report, void *ud);
/* Stops the watcher and frees everything. */
void cpx_store_close(cpx_store_t *s);

/* The process-wide store for `dir` (already expanded): opened (watching)
 * on first use, reopened when the directory changes. NULL on failure. */
cpx_store_t *cpx_store_global(const char *dir);
/* The current global store or NULL. */
cpx_store_t *cpx_store_current(void);

const char *cpx_store_dir(const cpx_store_t *s);

/* Bumped whenever a scan changed the set of credentials. */
uint64_t cpx_store_version(cpx_store_t *s);

/* Rescans now (the watcher does this by itself). Returns 1 when something
 * changed, 0 when not, or a negative code. */
int cpx_store_rescan(cpx_store_t *s);

/* A copy of every loaded credential, sorted by name. */
int cpx_store_snapshot(cpx_store_t *s, cpx_store_entry_t **out, size_t *n);
void cpx_store_snapshot_free(cpx_store_entry_t *e, size_t n);

/* Writes `name` atomically with mode 0600, then rescans. name must be a
 * plain file name ending in .json. */
int cpx_store_write(cpx_store_t *s, const char *name, const char *data,
                    size_t len);
/* Deletes `name`, then rescans. */
int cpx_store_remove(cpx_store_t *s, const char *name);

/* Atomic 0600 write into an open directory (tmp + fsync + rename + dir
 * fsync): a credential file name, or ".<name>.json" for the runtime's own
 * files (skipped by the credential scan). Exposed for the OAuth refresher,
 * the pool's cooldown file and tests. */
int cpx_store_write_file(const char *dir, const char *name, const char *data,
                         size_t len);

/* The same atomic write for any plain file name in dir, with the given
 * permission bits (config.yaml through the management API keeps its own). */
int cpx_write_atomic(const char *dir, const char *name, const char *data,
                     size_t len, unsigned mode);

#endif /* CPX_STORE_H */
