/* cpx_usage.h: the usage store, one row per finished client request.
 *
 * Process-wide (every worker feeds it). Workers hand records to
 * cpx_usage_submit, which only takes a lock and pushes onto a bounded
 * queue: it never blocks on I/O and never waits for room. When the queue
 * is full the record is counted as dropped. One writer thread takes the
 * queue in batches (every flush interval or batch-size records, whichever
 * comes first) and appends each batch in one transaction, so a kill -9
 * loses at most the records still queued: those of the last flush
 * interval. The same thread prunes rows older than the retention period
 * (at start and every hour).
 *
 * The storage sits behind cpx_usage_backend_t: the embedded SQLite backend
 * (WAL mode) is the one built here; another (PostgreSQL, for several
 * instances sharing usage) implements the same table of functions without
 * any change to the callers. Backend functions are called off the event
 * loops only (the writer thread, libuv's threadpool) and must be safe to
 * call from several threads at once.
 */
#ifndef CPX_USAGE_H
#define CPX_USAGE_H

#include <stddef.h>
#include <stdint.h>

#include "cpx.h"

/* The record's text fields (rt.record's names), in column order. */
enum {
  CPX_US_ID = 0,
  CPX_US_METHOD,
  CPX_US_ENDPOINT,
  CPX_US_CLIENT_FORMAT,
  CPX_US_PROVIDER,
  CPX_US_ACCOUNT,
  CPX_US_CREDENTIAL,
  CPX_US_MODEL,
  CPX_US_UPSTREAM_MODEL,
  CPX_US_ALIAS,
  CPX_US_CLIENT_KEY,
  CPX_US_ERROR,
  CPX_US_TAG,
  CPX_US_PATH,
  CPX_US_SOURCE, /* account email or entry name (CLIProxyAPI's source) */
  CPX_USAGE_NSTR
};

/* Its numeric fields; the token counts are usage.<kind> in Lua. */
enum {
  CPX_UN_TIME = 0, /* epoch seconds (fractional), start of the request */
  CPX_UN_LATENCY_MS,
  CPX_UN_TTFT_MS,
  CPX_UN_STREAM, /* 0/1 */
  CPX_UN_STATUS,
  CPX_UN_FAILED, /* 0/1 */
  CPX_UN_ATTEMPTS,
  CPX_UN_INPUT,
  CPX_UN_OUTPUT,
  CPX_UN_REASONING,
  CPX_UN_CACHE_READ,
  CPX_UN_CACHE_WRITE,
  CPX_USAGE_NNUM
};

extern const char *const cpx_usage_str_names[CPX_USAGE_NSTR];
extern const char *const cpx_usage_num_names[CPX_USAGE_NNUM];

/* One record. Every s[i] is owned by the record (NULL: absent); has[i]
 * says whether n[i] is set (absent numbers are stored as NULL). */
typedef struct {
  char *s[CPX_USAGE_NSTR];
  double n[CPX_USAGE_NNUM];
  unsigned char has[CPX_USAGE_NNUM];
} cpx_usage_rec_t;

/* Frees the strings (not the struct itself). */
void cpx_usage_rec_clear(cpx_usage_rec_t *r);

/* What a query selects: rows with from <= time < to (0: unbounded). */
typedef struct {
  double from, to;
  size_t limit; /* 0: no limit */
  int newest;   /* 1: the newest rows first (with limit: the last ones) */
} cpx_usage_filter_t;

/* Dimensions an aggregate can group by (up to CPX_USAGE_MAX_DIMS). */
enum {
  CPX_UD_HOUR = 0,    /* "2026-12-07T07:00:00Z" */
  CPX_UD_DAY,         /* "2026-12-07" */
  CPX_UD_HOUR_OF_DAY, /* "00".."23", as CLIProxyAPI's requests_by_hour */
  CPX_UD_MODEL,
  CPX_UD_ACCOUNT,
  CPX_UD_CLIENT_KEY,
  CPX_UD_PROVIDER,
  CPX_UD_ENDPOINT,
  CPX_UD_STATUS,
  CPX_USAGE_NDIMS
};
#define CPX_USAGE_MAX_DIMS 3
extern const char *const cpx_usage_dim_names[CPX_USAGE_NDIMS];

/* One aggregate row; keys[i] belongs to the backend and is valid only
 * during the callback. */
typedef struct {
  const char *keys[CPX_USAGE_MAX_DIMS];
  int64_t requests, success, failure;
  int64_t input, output, reasoning, cache_read, cache_write;
  double latency_ms_sum;
} cpx_usage_group_t;

/* Callbacks return 0 to go on, non-zero to stop. */
typedef int (*cpx_usage_row_cb)(void *ud, const cpx_usage_rec_t *r);
typedef int (*cpx_usage_group_cb)(void *ud, const cpx_usage_group_t *g);

typedef struct cpx_usage_backend_s cpx_usage_backend_t;
struct cpx_usage_backend_s {
  const char *name;
  /* Adds the records that are new by id; *added counts them. Used by the
   * writer (append) and by imports: both are idempotent on id. */
  int (*append)(cpx_usage_backend_t *b, const cpx_usage_rec_t *recs, size_t n,
                size_t *added);
  /* Records matching f, oldest first (newest first with f->newest). */
  int (*query)(cpx_usage_backend_t *b, const cpx_usage_filter_t *f,
               cpx_usage_row_cb cb, void *ud);
  /* Sums over the rows matching f, grouped by dims (ndims may be 0). */
  int (*aggregate)(cpx_usage_backend_t *b, const cpx_usage_filter_t *f,
                   const int *dims, size_t ndims, cpx_usage_group_cb cb,
                   void *ud);
  /* Deletes rows older than before (epoch seconds). */
  int (*prune)(cpx_usage_backend_t *b, double before, size_t *removed);
  void (*close)(cpx_usage_backend_t *b);
  char err[256]; /* the last failure's text */
};

/* The embedded backend: a SQLite file at path (created 0600, parent
 * directories 0700). */
int cpx_usage_sqlite_open(cpx_usage_backend_t **out, const char *path,
                          char *err, size_t errlen);

/* ---- the process-wide store --------------------------------------------- */

typedef struct {
  char path[4096];
  double retention_days; /* rows older than this are pruned; 0: keep */
  size_t queue_max;      /* records waiting for the writer (16384) */
  size_t batch_max;      /* a batch is written at this many (256) */
  uint64_t flush_ms;     /* or after this long (1000) */
} cpx_usage_config_t;

void cpx_usage_config_defaults(cpx_usage_config_t *c);

typedef struct {
  uint64_t submitted, written, dropped, failed, batches, pruned;
  size_t queued;
  int open;
} cpx_usage_stats_t;

/* Opens the backend and starts the writer thread. A second call with the
 * same path only updates the retention, batch and interval settings;
 * another path is refused (CPX_ESTATE) until cpx_usage_close. */
int cpx_usage_open(const cpx_usage_config_t *c, char *err, size_t errlen);
/* Takes ownership of rec's strings (rec is cleared). Returns 0,
 * CPX_ELIMIT (queue full: dropped and counted) or CPX_ESTATE (not open:
 * dropped, not counted). Never blocks on I/O. */
int cpx_usage_submit(cpx_usage_rec_t *rec);
/* Waits until everything submitted so far is written (tests, shutdown). */
int cpx_usage_flush(void);
/* Flushes, stops the writer and closes the backend. */
void cpx_usage_close(void);
void cpx_usage_stats(cpx_usage_stats_t *out);
/* The open backend, or NULL. Valid until cpx_usage_close. */
cpx_usage_backend_t *cpx_usage_backend(void);

#endif /* CPX_USAGE_H */
