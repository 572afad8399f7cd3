/* cpx_usage.c: the usage store (see cpx_usage.h): the SQLite backend and
 * the process-wide queue with its writer thread. */
#include "cpx_usage.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "cpx_log.h"

const char *const cpx_usage_str_names[CPX_USAGE_NSTR] = {
    "id",         "method",     "endpoint", "client_format",  "provider",
    "account",    "credential", "model",    "upstream_model", "alias",
    "client_key", "error",      "tag",      "path",           "source"};

const char *const cpx_usage_num_names[CPX_USAGE_NNUM] = {
    "time",   "latency_ms", "ttft_ms",    "stream",
    "status", "failed",     "attempts",   "input",
    "output", "reasoning",  "cache_read", "cache_write"};

const char *const cpx_usage_dim_names[CPX_USAGE_NDIMS] = {
    "hour",       "day",      "hour_of_day", "model", "account",
    "client_key", "provider", "endpoint",    "status"};

void cpx_usage_rec_clear(cpx_usage_rec_t *r) {
  for (int i = 0; i < CPX_USAGE_NSTR; i++) {
    free(r->s[i]);
    r->s[i] = NULL;
  }
  memset(r->has, 0, sizeof(r->has));
}

/* ---- the SQLite backend ------------------------------------------------- */

/* Two connections: the writer's (appends, imports, prunes) and one for
 * reads, each behind its own lock, so a long query never holds up the
 * writer (WAL lets a reader and a writer work at once). */
typedef struct {
  cpx_usage_backend_t base;
  sqlite3 *wdb, *rdb;
  sqlite3_stmt *insert;
  pthread_mutex_t wmu, rmu;
} sqlite_backend_t;

/* Column order: the text fields, then the numbers (cpx_usage.h). */
static const char *const num_types[CPX_USAGE_NNUM] = {
    "REAL NOT NULL", "REAL",    "REAL",    "INTEGER", "INTEGER", "INTEGER",
    "INTEGER",       "INTEGER", "INTEGER", "INTEGER", "INTEGER", "INTEGER"};

static void set_err(cpx_usage_backend_t *b, sqlite3 *db, const char *what) {
  snprintf(b->err, sizeof(b->err), "%s: %s", what,
           db ? sqlite3_errmsg(db) : "failed");
}

static int exec(sqlite3 *db, const char *sql) {
  return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : CPX_EIO;
}

static int sq_append(cpx_usage_backend_t *b, const cpx_usage_rec_t *recs,
                     size_t n, size_t *added) {
  sqlite_backend_t *s = (sqlite_backend_t *)b;
  size_t add = 0;
  int rc = 0;

  pthread_mutex_lock(&s->wmu);
  if (exec(s->wdb, "BEGIN IMMEDIATE") != 0) {
    set_err(b, s->wdb, "begin");
    pthread_mutex_unlock(&s->wmu);
    return CPX_EIO;
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    const cpx_usage_rec_t *r = &recs[i];
    sqlite3_stmt *st = s->insert;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    for (int k = 0; k < CPX_USAGE_NSTR; k++) {
      if (r->s[k])
        sqlite3_bind_text(st, k + 1, r->s[k], -1, SQLITE_STATIC);
    }
    for (int k = 0; k < CPX_USAGE_NNUM; k++) {
      int col = CPX_USAGE_NSTR + k + 1;
      if (!r->has[k])
        continue;
      if (num_types[k][0] == 'R')
        sqlite3_bind_double(st, col, r->n[k]);
      else
        sqlite3_bind_int64(st, col, (sqlite3_int64)llround(r->n[k]));
    }
    if (!r->s[CPX_US_ID] || !r->has[CPX_UN_TIME]) {
      continue; /* no identity or no time: not a record */
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
      set_err(b, s->wdb, "insert");
      rc = CPX_EIO;
      break;
    }
    add += (size_t)sqlite3_changes(s->wdb);
  }
  sqlite3_reset(s->insert);
  if (rc == 0 && exec(s->wdb, "COMMIT") != 0) {
    set_err(b, s->wdb, "commit");
    rc = CPX_EIO;
  }
  if (rc != 0)
    exec(s->wdb, "ROLLBACK");
  pthread_mutex_unlock(&s->wmu);
  if (added)
    *added = rc == 0 ? add : 0;
  return rc;
}

/* " WHERE time >= ? AND time < ?" for the filter; returns the number of
 * parameters it added. */
static int where(char *sql, size_t cap, const cpx_usage_filter_t *f) {
  size_t n = strlen(sql);
  int np = 0;
  if (f->from > 0 || f->to > 0)
    n += (size_t)snprintf(sql + n, cap - n, " WHERE 1=1");
  if (f->from > 0) {
    n += (size_t)snprintf(sql + n, cap - n, " AND time >= ?%d", ++np);
  }
  if (f->to > 0)
    snprintf(sql + n, cap - n, " AND time < ?%d", ++np);
  return np;
}

static void bind_filter(sqlite3_stmt *st, const cpx_usage_filter_t *f) {
  int i = 1;
  if (f->from > 0)
    sqlite3_bind_double(st, i++, f->from);
  if (f->to > 0)
    sqlite3_bind_double(st, i, f->to);
}

static int sq_query(cpx_usage_backend_t *b, const cpx_usage_filter_t *f,
                    cpx_usage_row_cb cb, void *ud) {
  sqlite_backend_t *s = (sqlite_backend_t *)b;
  char sql[512] = "SELECT * FROM requests";
  size_t n;
  sqlite3_stmt *st;
  int rc = 0, step;

  where(sql, sizeof(sql), f);
  n = strlen(sql);
  n += (size_t)snprintf(sql + n, sizeof(sql) - n, " ORDER BY time %s, id",
                        f->newest ? "DESC" : "ASC");
  if (f->limit)
    snprintf(sql + n, sizeof(sql) - n, " LIMIT %zu", f->limit);
  pthread_mutex_lock(&s->rmu);
  if (sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL) != SQLITE_OK) {
    set_err(b, s->rdb, "query");
    pthread_mutex_unlock(&s->rmu);
    return CPX_EIO;
  }
  bind_filter(st, f);
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    cpx_usage_rec_t r;
    memset(&r, 0, sizeof(r));
    /* The strings stay the statement's: valid during the callback. */
    for (int k = 0; k < CPX_USAGE_NSTR; k++)
      r.s[k] = (char *)sqlite3_column_text(st, k);
    for (int k = 0; k < CPX_USAGE_NNUM; k++) {
      int col = CPX_USAGE_NSTR + k;
      if (sqlite3_column_type(st, col) == SQLITE_NULL)
        continue;
      r.has[k] = 1;
      r.n[k] = sqlite3_column_double(st, col);
    }
    if (cb(ud, &r) != 0)
      break;
  }
  if (step != SQLITE_ROW && step != SQLITE_DONE) {
    set_err(b, s->rdb, "query");
    rc = CPX_EIO;
  }
  sqlite3_finalize(st);
  pthread_mutex_unlock(&s->rmu);
  return rc;
}

/* The SQL expression of each dimension (a fixed table: nothing a client
 * sends ever becomes SQL). */
static const char *const dim_sql[CPX_USAGE_NDIMS] = {
    "strftime('%Y-%m-%dT%H:00:00Z', time, 'unixepoch')",
    "strftime('%Y-%m-%d', time, 'unixepoch')",
    "strftime('%H', time, 'unixepoch')",
    "coalesce(model, '')",
    "coalesce(account, '')",
    "coalesce(client_key, '')",
    "coalesce(provider, '')",
    "coalesce(endpoint, '')",
    "coalesce(CAST(status AS TEXT), '')"};

static int sq_aggregate(cpx_usage_backend_t *b, const cpx_usage_filter_t *f,
                        const int *dims, size_t ndims, cpx_usage_group_cb cb,
                        void *ud) {
  sqlite_backend_t *s = (sqlite_backend_t *)b;
  char sql[2048] = "SELECT ";
  size_t n = strlen(sql);
  sqlite3_stmt *st;
  int rc = 0, step;

  if (ndims > CPX_USAGE_MAX_DIMS)
    return CPX_EINVAL;
  for (size_t i = 0; i < ndims; i++) {
    if (dims[i] < 0 || dims[i] >= CPX_USAGE_NDIMS)
      return CPX_EINVAL;
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s AS d%zu, ",
                          dim_sql[dims[i]], i);
  }
  n += (size_t)snprintf(
      sql + n, sizeof(sql) - n,
      "count(*), coalesce(sum(failed = 0), 0), coalesce(sum(failed <> 0), 0), "
      "coalesce(sum(input), 0), coalesce(sum(output), 0), "
      "coalesce(sum(reasoning), 0), coalesce(sum(cache_read), 0), "
      "coalesce(sum(cache_write), 0), coalesce(sum(latency_ms), 0) "
      "FROM requests");
  where(sql, sizeof(sql), f);
  n = strlen(sql);
  for (size_t i = 0; i < ndims; i++)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s d%zu",
                          i ? "," : " GROUP BY", i);
  for (size_t i = 0; i < ndims; i++)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s d%zu",
                          i ? "," : " ORDER BY", i);
  pthread_mutex_lock(&s->rmu);
  if (sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL) != SQLITE_OK) {
    set_err(b, s->rdb, "aggregate");
    pthread_mutex_unlock(&s->rmu);
    return CPX_EIO;
  }
  bind_filter(st, f);
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    cpx_usage_group_t g;
    int c = (int)ndims;
    memset(&g, 0, sizeof(g));
    for (size_t i = 0; i < ndims; i++)
      g.keys[i] = (const char *)sqlite3_column_text(st, (int)i);
    g.requests = sqlite3_column_int64(st, c);
    if (ndims == 0 && g.requests == 0)
      break; /* no rows: no group */
    g.success = sqlite3_column_int64(st, c + 1);
    g.failure = sqlite3_column_int64(st, c + 2);
    g.input = sqlite3_column_int64(st, c + 3);
    g.output = sqlite3_column_int64(st, c + 4);
    g.reasoning = sqlite3_column_int64(st, c + 5);
    g.cache_read = sqlite3_column_int64(st, c + 6);
    g.cache_write = sqlite3_column_int64(st, c + 7);
    g.latency_ms_sum = sqlite3_column_double(st, c + 8);
    if (cb(ud, &g) != 0)
      break;
  }
  if (step != SQLITE_ROW && step != SQLITE_DONE) {
    set_err(b, s->rdb, "aggregate");
    rc = CPX_EIO;
  }
  sqlite3_finalize(st);
  pthread_mutex_unlock(&s->rmu);
  return rc;
}

static int sq_prune(cpx_usage_backend_t *b, double before, size_t *removed) {
  sqlite_backend_t *s = (sqlite_backend_t *)b;
  sqlite3_stmt *st;
  int rc = 0;

  pthread_mutex_lock(&s->wmu);
  if (sqlite3_prepare_v2(s->wdb, "DELETE FROM requests WHERE time < ?1", -1,
                         &st, NULL) != SQLITE_OK) {
    set_err(b, s->wdb, "prune");
    pthread_mutex_unlock(&s->wmu);
    return CPX_EIO;
  }
  sqlite3_bind_double(st, 1, before);
  if (sqlite3_step(st) != SQLITE_DONE) {
    set_err(b, s->wdb, "prune");
    rc = CPX_EIO;
  }
  if (removed)
    *removed = rc == 0 ? (size_t)sqlite3_changes(s->wdb) : 0;
  sqlite3_finalize(st);
  pthread_mutex_unlock(&s->wmu);
  return rc;
}

static void sq_close(cpx_usage_backend_t *b) {
  sqlite_backend_t *s = (sqlite_backend_t *)b;
  if (!s)
    return;
  if (s->insert)
    sqlite3_finalize(s->insert);
  if (s->wdb)
    sqlite3_close(s->wdb);
  if (s->rdb)
    sqlite3_close(s->rdb);
  pthread_mutex_destroy(&s->wmu);
  pthread_mutex_destroy(&s->rmu);
  free(s);
}

/* mkdir -p with 0700 for the parents of path. */
static int make_parents(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n >= sizeof(buf))
    return CPX_ELIMIT;
  memcpy(buf, path, n + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
      return -errno;
    *p = '/';
  }
  return 0;
}

static int open_db(const char *path, sqlite3 **db, int flags) {
  if (sqlite3_open_v2(path, db, flags | SQLITE_OPEN_FULLMUTEX, NULL) !=
      SQLITE_OK)
    return CPX_EIO;
  /* A reader and the writer wait for each other's short locks instead of
   * failing at once. */
  sqlite3_busy_timeout(*db, 5000);
  return 0;
}

int cpx_usage_sqlite_open(cpx_usage_backend_t **out, const char *path,
                          char *err, size_t errlen) {
  sqlite_backend_t *s;
  char sql[2048];
  size_t n;
  int fd;

  *out = NULL;
  if (make_parents(path) != 0) {
    snprintf(err, errlen, "%s: cannot create its directory: %s", path,
             strerror(errno));
    return CPX_EIO;
  }
  /* Created 0600 before SQLite opens it: usage names accounts and models. */
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  close(fd);
  s = calloc(1, sizeof(*s));
  if (!s)
    return CPX_ENOMEM;
  pthread_mutex_init(&s->wmu, NULL);
  pthread_mutex_init(&s->rmu, NULL);
  s->base.name = "sqlite";
  s->base.append = sq_append;
  s->base.query = sq_query;
  s->base.aggregate = sq_aggregate;
  s->base.prune = sq_prune;
  s->base.close = sq_close;
  if (open_db(path, &s->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) != 0)
    goto fail;
  n = (size_t)snprintf(sql, sizeof(sql),
                       "CREATE TABLE IF NOT EXISTS requests (");
  for (int k = 0; k < CPX_USAGE_NSTR; k++)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s TEXT%s, ",
                          cpx_usage_str_names[k],
                          k == CPX_US_ID ? " PRIMARY KEY" : "");
  for (int k = 0; k < CPX_USAGE_NNUM; k++)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s %s%s",
                          cpx_usage_num_names[k], num_types[k],
                          k + 1 < CPX_USAGE_NNUM ? ", " : ")");
  /* WAL: readers do not block the writer; NORMAL sync: a committed batch
   * survives the process being killed (it is in the OS's cache), and only
   * a power loss can take the last commits. */
  if (exec(s->wdb, "PRAGMA journal_mode=WAL") != 0 ||
      exec(s->wdb, "PRAGMA synchronous=NORMAL") != 0 ||
      exec(s->wdb, sql) != 0 ||
      exec(s->wdb, "CREATE INDEX IF NOT EXISTS requests_time ON "
                   "requests(time)") != 0)
    goto fail;
  n = (size_t)snprintf(sql, sizeof(sql),
                       "INSERT OR IGNORE INTO requests VALUES (");
  for (int k = 0; k < CPX_USAGE_NSTR + CPX_USAGE_NNUM; k++)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "?%d%s", k + 1,
                          k + 1 < CPX_USAGE_NSTR + CPX_USAGE_NNUM ? "," : ")");
  if (sqlite3_prepare_v2(s->wdb, sql, -1, &s->insert, NULL) != SQLITE_OK)
    goto fail;
  if (open_db(path, &s->rdb, SQLITE_OPEN_READONLY) != 0)
    goto fail;
  *out = &s->base;
  return 0;

fail:
  snprintf(err, errlen, "%s: %s", path,
           s->wdb ? sqlite3_errmsg(s->wdb) : "cannot open the database");
  sq_close(&s->base);
  return CPX_EIO;
}

/* ---- the process-wide store --------------------------------------------- */

void cpx_usage_config_defaults(cpx_usage_config_t *c) {
  memset(c, 0, sizeof(*c));
  c->retention_days = 30;
  c->queue_max = 16384;
  c->batch_max = 256;
  c->flush_ms = 1000;
}

/* Everything below is guarded by umu. The queue is a ring of records
 * (moved in by value, their strings owned by the slot). */
static pthread_mutex_t umu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t uwake = PTHREAD_COND_INITIALIZER; /* the writer */
static pthread_cond_t uidle = PTHREAD_COND_INITIALIZER; /* flushers */
static struct {
  pthread_t thread;
  int running, stop;
  int urgent; /* a flush asked for the queue now, short batch or not */
  cpx_usage_config_t cfg;
  cpx_usage_backend_t *b;
  cpx_usage_rec_t *ring;
  size_t cap, head, len;
  uint64_t taken; /* records the writer took off the ring and finished */
  cpx_usage_stats_t st;
  double last_prune;
} G;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void deadline(struct timespec *ts, uint64_t ms) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += (time_t)(ms / 1000);
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Called with mu held; releases it around the database work. */
static void maybe_prune(void) {
  double t = now_s(), days = G.cfg.retention_days;
  size_t removed = 0;
  cpx_usage_backend_t *b = G.b;
  if (days <= 0 || t - G.last_prune < 3600)
    return;
  G.last_prune = t;
  pthread_mutex_unlock(&umu);
  if (b->prune(b, t - days * 86400, &removed) != 0)
    cpx_log_warn(NULL, "usage: prune failed: %s", b->err);
  pthread_mutex_lock(&umu);
  G.st.pruned += removed;
}

static void *writer_main(void *arg) {
  cpx_usage_rec_t *batch;
  CPX_UNUSED(arg);

  pthread_mutex_lock(&umu);
  batch = calloc(G.cfg.batch_max, sizeof(*batch));
  maybe_prune();
  for (;;) {
    size_t n = 0, added = 0;
    int rc;
    if (G.len < G.cfg.batch_max && !G.stop) {
      struct timespec ts;
      deadline(&ts, G.cfg.flush_ms);
      while (G.len < G.cfg.batch_max && !G.stop && !G.urgent &&
             pthread_cond_timedwait(&uwake, &umu, &ts) == 0)
        ;
    }
    G.urgent = 0;
    if (G.len == 0) {
      pthread_cond_broadcast(&uidle);
      if (G.stop)
        break;
      maybe_prune();
      continue;
    }
    while (n < G.cfg.batch_max && G.len > 0 && batch) {
      batch[n++] = G.ring[G.head];
      memset(&G.ring[G.head], 0, sizeof(G.ring[G.head]));
      G.head = (G.head + 1) % G.cap;
      G.len--;
    }
    pthread_mutex_unlock(&umu);
    rc = G.b->append(G.b, batch, n, &added);
    if (rc != 0)
      cpx_log_warn(NULL, "usage: writing %zu records failed: %s", n, G.b->err);
    for (size_t i = 0; i < n; i++)
      cpx_usage_rec_clear(&batch[i]);
    pthread_mutex_lock(&umu);
    G.st.batches++;
    if (rc == 0)
      G.st.written += n;
    else
      G.st.failed += n;
    G.taken += n;
    pthread_cond_broadcast(&uidle);
    maybe_prune();
  }
  pthread_mutex_unlock(&umu);
  free(batch);
  return NULL;
}

int cpx_usage_open(const cpx_usage_config_t *c, char *err, size_t errlen) {
  cpx_usage_backend_t *b;
  int rc;

  pthread_mutex_lock(&umu);
  if (G.running) {
    if (strcmp(G.cfg.path, c->path) != 0) {
      snprintf(err, errlen,
               "usage.path changed to %s: the store stays at %s until a "
               "restart",
               c->path, G.cfg.path);
      pthread_mutex_unlock(&umu);
      return CPX_ESTATE;
    }
    G.cfg.retention_days = c->retention_days;
    G.cfg.flush_ms = c->flush_ms ? c->flush_ms : 1000;
    if (c->batch_max && c->batch_max <= G.cfg.batch_max)
      G.cfg.batch_max = c->batch_max; /* the batch buffer is sized at open */
    G.last_prune = 0;                 /* a new retention applies now */
    pthread_cond_signal(&uwake);
    pthread_mutex_unlock(&umu);
    return 0;
  }
  rc = cpx_usage_sqlite_open(&b, c->path, err, errlen);
  if (rc != 0) {
    pthread_mutex_unlock(&umu);
    return rc;
  }
  G.cfg = *c;
  if (!G.cfg.queue_max)
    G.cfg.queue_max = 16384;
  if (!G.cfg.batch_max)
    G.cfg.batch_max = 256;
  if (!G.cfg.flush_ms)
    G.cfg.flush_ms = 1000;
  G.ring = calloc(G.cfg.queue_max, sizeof(*G.ring));
  if (!G.ring) {
    b->close(b);
    pthread_mutex_unlock(&umu);
    return CPX_ENOMEM;
  }
  G.cap = G.cfg.queue_max;
  G.head = G.len = 0;
  G.b = b;
  G.stop = 0;
  G.last_prune = 0;
  memset(&G.st, 0, sizeof(G.st));
  G.taken = 0;
  if (pthread_create(&G.thread, NULL, writer_main, NULL) != 0) {
    snprintf(err, errlen, "cannot start the usage writer thread");
    free(G.ring);
    G.ring = NULL;
    b->close(b);
    G.b = NULL;
    pthread_mutex_unlock(&umu);
    return CPX_EIO;
  }
  G.running = 1;
  pthread_mutex_unlock(&umu);
  return 0;
}

int cpx_usage_submit(cpx_usage_rec_t *rec) {
  int rc = 0;
  pthread_mutex_lock(&umu);
  if (!G.running || G.stop) {
    rc = CPX_ESTATE;
  } else if (G.len >= G.cap) {
    G.st.dropped++;
    rc = CPX_ELIMIT;
  } else {
    G.ring[(G.head + G.len) % G.cap] = *rec;
    memset(rec, 0, sizeof(*rec));
    G.len++;
    G.st.submitted++;
    if (G.len >= G.cfg.batch_max)
      pthread_cond_signal(&uwake);
  }
  pthread_mutex_unlock(&umu);
  if (rc != 0)
    cpx_usage_rec_clear(rec);
  return rc;
}

int cpx_usage_flush(void) {
  uint64_t want;
  pthread_mutex_lock(&umu);
  if (!G.running) {
    pthread_mutex_unlock(&umu);
    return CPX_ESTATE;
  }
  want = G.taken + G.len;
  while (G.taken < want && G.running) {
    struct timespec ts;
    G.urgent = 1;
    pthread_cond_signal(&uwake);
    deadline(&ts, 100);
    pthread_cond_timedwait(&uidle, &umu, &ts);
  }
  pthread_mutex_unlock(&umu);
  return 0;
}

void cpx_usage_close(void) {
  pthread_mutex_lock(&umu);
  if (!G.running) {
    pthread_mutex_unlock(&umu);
    return;
  }
  G.stop = 1;
  pthread_cond_signal(&uwake);
  pthread_mutex_unlock(&umu);
  pthread_join(G.thread, NULL); /* it writes what is queued, then ends */
  pthread_mutex_lock(&umu);
  G.running = 0;
  for (size_t i = 0; i < G.len; i++)
    cpx_usage_rec_clear(&G.ring[(G.head + i) % G.cap]);
  free(G.ring);
  G.ring = NULL;
  G.len = G.cap = 0;
  G.b->close(G.b);
  G.b = NULL;
  pthread_mutex_unlock(&umu);
}

void cpx_usage_stats(cpx_usage_stats_t *out) {
  pthread_mutex_lock(&umu);
  *out = G.st;
  out->queued = G.len;
  out->open = G.running;
  pthread_mutex_unlock(&umu);
}

cpx_usage_backend_t *cpx_usage_backend(void) {
  cpx_usage_backend_t *b;
  pthread_mutex_lock(&umu);
  b = G.running ? G.b : NULL;
  pthread_mutex_unlock(&umu);
  return b;
}
