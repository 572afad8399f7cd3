/* test_usage.c: the usage store: the SQLite backend (append idempotent on
 * id, queries, aggregates, prune) and the process-wide queue (batches,
 * flush, drops when full, a reopen keeps everything). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpx_test.h"
#include "cpx_usage.h"

static char dir[256];
static char path[512];

static void fresh(void) {
  snprintf(dir, sizeof(dir), "/tmp/cpx-usage-XXXXXX");
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof(path), "%s/sub/usage.db", dir);
}

static void cleanup(void) {
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", dir);
}

static void mk(cpx_usage_rec_t *r, const char *id, double t, const char *model,
               int failed, double in, double out) {
  memset(r, 0, sizeof(*r));
  r->s[CPX_US_ID] = strdup(id);
  r->s[CPX_US_MODEL] = strdup(model);
  r->s[CPX_US_PROVIDER] = strdup("openai-compatibility");
  r->n[CPX_UN_TIME] = t;
  r->has[CPX_UN_TIME] = 1;
  r->n[CPX_UN_FAILED] = failed;
  r->has[CPX_UN_FAILED] = 1;
  r->n[CPX_UN_STATUS] = failed ? 502 : 200;
  r->has[CPX_UN_STATUS] = 1;
  r->n[CPX_UN_INPUT] = in;
  r->has[CPX_UN_INPUT] = 1;
  r->n[CPX_UN_OUTPUT] = out;
  r->has[CPX_UN_OUTPUT] = 1;
  r->n[CPX_UN_LATENCY_MS] = 12.5;
  r->has[CPX_UN_LATENCY_MS] = 1;
}

typedef struct {
  int n;
  char ids[16][32];
  double times[16];
  int ttft_set;
} rows_t;

static int collect(void *ud, const cpx_usage_rec_t *r) {
  rows_t *rs = ud;
  if (rs->n < 16) {
    snprintf(rs->ids[rs->n], 32, "%s", r->s[CPX_US_ID]);
    rs->times[rs->n] = r->n[CPX_UN_TIME];
    rs->ttft_set += r->has[CPX_UN_TTFT_MS];
  }
  rs->n++;
  return 0;
}

typedef struct {
  int n;
  char keys[8][64];
  int64_t req[8], fail[8], in[8];
} groups_t;

static int gcollect(void *ud, const cpx_usage_group_t *g) {
  groups_t *gs = ud;
  if (gs->n < 8) {
    snprintf(gs->keys[gs->n], 64, "%s", g->keys[0] ? g->keys[0] : "");
    gs->req[gs->n] = g->requests;
    gs->fail[gs->n] = g->failure;
    gs->in[gs->n] = g->input;
  }
  gs->n++;
  return 0;
}

static void test_backend(void) {
  cpx_usage_backend_t *b;
  char err[256];
  cpx_usage_rec_t recs[3];
  size_t added = 99, removed = 0;
  cpx_usage_filter_t all = {0};
  rows_t rows;
  groups_t gs;
  struct stat st;
  int dims[1] = {CPX_UD_MODEL};

  fresh();
  CPX_CHECK_INT(cpx_usage_sqlite_open(&b, path, err, sizeof(err)), 0);
  CPX_CHECK_INT(stat(path, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0600);
  mk(&recs[0], "a", 1000.25, "m1", 0, 10, 5);
  mk(&recs[1], "b", 2000.5, "m2", 1, 3, 0);
  mk(&recs[2], "c", 3000.75, "m1", 0, 7, 1);
  CPX_CHECK_INT(b->append(b, recs, 3, &added), 0);
  CPX_CHECK_INT(added, 3);
  /* the same ids again: nothing added */
  CPX_CHECK_INT(b->append(b, recs, 2, &added), 0);
  CPX_CHECK_INT(added, 0);

  memset(&rows, 0, sizeof(rows));
  CPX_CHECK_INT(b->query(b, &all, collect, &rows), 0);
  CPX_CHECK_INT(rows.n, 3);
  CPX_CHECK(strcmp(rows.ids[0], "a") == 0 && strcmp(rows.ids[2], "c") == 0);
  CPX_CHECK(rows.times[1] == 2000.5); /* exact round trip */
  CPX_CHECK_INT(rows.ttft_set, 0);    /* absent stays absent */

  {
    cpx_usage_filter_t f = {1500, 3000, 0, 0};
    memset(&rows, 0, sizeof(rows));
    CPX_CHECK_INT(b->query(b, &f, collect, &rows), 0);
    CPX_CHECK_INT(rows.n, 1);
    CPX_CHECK(strcmp(rows.ids[0], "b") == 0);
  }
  {
    cpx_usage_filter_t f = {0, 0, 2, 1};
    memset(&rows, 0, sizeof(rows));
    CPX_CHECK_INT(b->query(b, &f, collect, &rows), 0);
    CPX_CHECK_INT(rows.n, 2);
    CPX_CHECK(strcmp(rows.ids[0], "c") == 0 && strcmp(rows.ids[1], "b") == 0);
  }

  memset(&gs, 0, sizeof(gs));
  CPX_CHECK_INT(b->aggregate(b, &all, dims, 1, gcollect, &gs), 0);
  CPX_CHECK_INT(gs.n, 2);
  CPX_CHECK(strcmp(gs.keys[0], "m1") == 0);
  CPX_CHECK_INT(gs.req[0], 2);
  CPX_CHECK_INT(gs.in[0], 17);
  CPX_CHECK_INT(gs.fail[1], 1);

  memset(&gs, 0, sizeof(gs));
  CPX_CHECK_INT(b->aggregate(b, &all, NULL, 0, gcollect, &gs), 0);
  CPX_CHECK_INT(gs.n, 1);
  CPX_CHECK_INT(gs.req[0], 3);

  CPX_CHECK_INT(b->prune(b, 2500, &removed), 0);
  CPX_CHECK_INT(removed, 2);
  memset(&rows, 0, sizeof(rows));
  CPX_CHECK_INT(b->query(b, &all, collect, &rows), 0);
  CPX_CHECK_INT(rows.n, 1);

  for (int i = 0; i < 3; i++)
    cpx_usage_rec_clear(&recs[i]);
  b->close(b);
  cleanup();
}

static void test_store(void) {
  cpx_usage_config_t c;
  cpx_usage_stats_t st;
  cpx_usage_rec_t r;
  char err[256];
  rows_t rows;
  cpx_usage_filter_t all = {0};
  char id[32];

  fresh();
  mk(&r, "x", 1, "m", 0, 1, 1);
  CPX_CHECK_INT(cpx_usage_submit(&r), CPX_ESTATE); /* not open: dropped */
  CPX_CHECK(r.s[CPX_US_ID] == NULL);

  cpx_usage_config_defaults(&c);
  snprintf(c.path, sizeof(c.path), "%s", path);
  c.queue_max = 2;
  c.batch_max = 100;
  c.flush_ms = 600000; /* only a flush or a full batch writes */
  /* The records are from 1970: with a retention the writer's prune at the
   * second open races the query below (it failed CI once). */
  c.retention_days = 0;
  CPX_CHECK_INT(cpx_usage_open(&c, err, sizeof(err)), 0);
  {
    cpx_usage_config_t other = c;
    snprintf(other.path, sizeof(other.path), "%s/other.db", dir);
    CPX_CHECK_INT(cpx_usage_open(&other, err, sizeof(err)), CPX_ESTATE);
  }
  for (int i = 0; i < 3; i++) {
    snprintf(id, sizeof(id), "r%d", i);
    mk(&r, id, 100 + i, "m", 0, 1, 1);
    CPX_CHECK_INT(cpx_usage_submit(&r), i < 2 ? 0 : CPX_ELIMIT);
  }
  cpx_usage_stats(&st);
  CPX_CHECK_INT(st.dropped, 1);
  CPX_CHECK_INT(st.queued, 2);
  CPX_CHECK_INT(st.written, 0);
  CPX_CHECK_INT(cpx_usage_flush(), 0);
  cpx_usage_stats(&st);
  CPX_CHECK_INT(st.written, 2);
  CPX_CHECK_INT(st.queued, 0);

  /* queued at close: written before the backend closes */
  mk(&r, "late", 200, "m", 0, 1, 1);
  CPX_CHECK_INT(cpx_usage_submit(&r), 0);
  cpx_usage_close();
  CPX_CHECK(cpx_usage_backend() == NULL);

  /* a restart finds every record */
  CPX_CHECK_INT(cpx_usage_open(&c, err, sizeof(err)), 0);
  memset(&rows, 0, sizeof(rows));
  CPX_CHECK_INT(
      cpx_usage_backend()->query(cpx_usage_backend(), &all, collect, &rows), 0);
  CPX_CHECK_INT(rows.n, 3);
  CPX_CHECK(strcmp(rows.ids[2], "late") == 0);
  cpx_usage_close();
  cleanup();
}

int main(void) {
  CPX_TEST_RUN(test_backend);
  CPX_TEST_RUN(test_store);
  CPX_TEST_DONE();
}
