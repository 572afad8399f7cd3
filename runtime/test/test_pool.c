/* test_pool.c: selection, priorities, affinity, backoff and cooldowns with
 * an injected clock; `test_pool --bench [N]` prints ns per selection. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cpx_pool.h"
#include "cpx_test.h"

static uint64_t fake_now;

static uint64_t fake_clock(void *ud) {
  CPX_UNUSED(ud);
  return fake_now;
}

static cpx_pool_t *mkpool(void) {
  cpx_pool_t *p;
  if (cpx_pool_new(&p) != 0)
    abort();
  fake_now = 1000000;
  cpx_pool_set_clock(p, fake_clock, NULL);
  return p;
}

static void add(cpx_pool_t *p, const char *id, int prio, int weight) {
  cpx_pool_account_t a = {id, "test", prio, weight, 0, 0};
  CPX_CHECK(cpx_pool_account(p, &a) >= 0);
}

/* A group "m" over the given accounts, all serving upstream model "up". */
static void group(cpx_pool_t *p, const char *name, const char **ids, int n) {
  cpx_pool_member_t m[64];
  for (int i = 0; i < n; i++) {
    m[i].account = ids[i];
    m[i].model = "up";
  }
  CPX_CHECK_INT(cpx_pool_set_group(p, name, m, (size_t)n), 0);
}

/* Picks and reports at once; returns the caller index or -1. */
static int pick_ok(cpx_pool_t *p, const char *g, int result) {
  cpx_pool_choice_t c;
  if (cpx_pool_pick(p, g, NULL, &c, NULL) != 0)
    return -1;
  cpx_pool_report(p, c.state, c.probe, result, 0);
  return (int)c.member;
}

static void test_round_robin(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"c", "a", "b"};
  for (int i = 0; i < 3; i++)
    add(p, ids[i], 0, 1);
  group(p, "m", ids, 3);
  /* Sorted by id: a (1), b (2), c (0). */
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 1);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 2);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 0);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 1);
  /* A rebuild keeps the cursor. */
  group(p, "m", ids, 3);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 2);
  cpx_pool_free(p);
}

static void test_fill_first_and_disabled(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a", "b"};
  cpx_pool_account_t dis = {"a", "test", 0, 1, 1, 0};
  add(p, "a", 0, 1);
  add(p, "b", 0, 1);
  group(p, "m", ids, 2);
  cpx_pool_configure(p, CPX_POOL_FILL_FIRST, 0, 0);
  for (int i = 0; i < 3; i++)
    CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 0);
  cpx_pool_account(p, &dis);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 1);
  dis.id = "b";
  cpx_pool_account(p, &dis);
  {
    cpx_pool_choice_t c;
    uint64_t w = 7;
    CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, &w), -ENOENT);
    CPX_CHECK_INT(w, 0);
    CPX_CHECK_INT(cpx_pool_pick(p, "nope", NULL, &c, &w), -ENOENT);
  }
  cpx_pool_free(p);
}

static void test_priority_tiers(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"low", "hi1", "hi2"};
  cpx_pool_choice_t c;
  add(p, "low", 0, 1);
  add(p, "hi1", 10, 1);
  add(p, "hi2", 10, 1);
  group(p, "m", ids, 3);
  for (int i = 0; i < 6; i++)
    CPX_CHECK(pick_ok(p, "m", CPX_POOL_OK) != 0);
  /* The high tier cools down: the low one serves. */
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_TRANSIENT, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_TRANSIENT, 0);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 0);
  /* Exclusion works across tiers too. */
  {
    uint32_t ex[] = {0};
    cpx_pool_pick_t req = {ex, 1, NULL, 0, -1};
    uint64_t w = 0;
    CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, &w), CPX_EAGAIN);
    CPX_CHECK_INT(w, CPX_POOL_TRANSIENT_MS);
  }
  fake_now += CPX_POOL_TRANSIENT_MS;
  CPX_CHECK(pick_ok(p, "m", CPX_POOL_OK) != 0);
  cpx_pool_free(p);
}

static void test_quota_backoff_and_probe(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a"};
  cpx_pool_choice_t c, c2;
  cpx_pool_state_info_t si;
  uint64_t w;
  add(p, "a", 0, 1);
  group(p, "m", ids, 1);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  CPX_CHECK_INT(c.probe, 0);
  CPX_CHECK_INT(cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0), 1000);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, &w), CPX_EAGAIN);
  CPX_CHECK_INT(w, 1000);
  CPX_CHECK_INT(cpx_pool_group_wait(p, "m"), 1000);
  /* Expiry: one probe, a second concurrent pick must wait for it. */
  fake_now += 1000;
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  CPX_CHECK_INT(c.probe, 1);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c2, &w), CPX_EAGAIN);
  CPX_CHECK_INT(w, 1000);
  /* The probe fails: the ladder goes on (2 s, then 4 s). */
  CPX_CHECK_INT(cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0), 2000);
  fake_now += 2000;
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  CPX_CHECK_INT(cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0), 4000);
  CPX_CHECK_INT(cpx_pool_get_state(p, "a", "up", &si), 0);
  CPX_CHECK_INT(si.remaining_ms, 4000);
  CPX_CHECK_INT(si.level, 3);
  CPX_CHECK_INT(si.quota, 1);
  CPX_CHECK_INT(si.reason, CPX_POOL_QUOTA);
  /* Success closes it and resets the ladder. */
  fake_now += 4000;
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  CPX_CHECK_INT(cpx_pool_get_state(p, "a", "up", &si), 0);
  CPX_CHECK_INT(si.remaining_ms, 0);
  CPX_CHECK_INT(si.level, 0);
  CPX_CHECK_INT(si.inflight, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  CPX_CHECK_INT(c.probe, 0);
  cpx_pool_report(p, c.state, 0, CPX_POOL_OK, 0);
  cpx_pool_free(p);
}

static void test_backoff_cap_and_burst(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a"};
  cpx_pool_choice_t c1, c2;
  uint64_t d = 1000;
  add(p, "a", 0, 1);
  group(p, "m", ids, 1);
  /* Two requests in flight both get 429: one window, one step. */
  cpx_pool_pick(p, "m", NULL, &c1, NULL);
  cpx_pool_pick(p, "m", NULL, &c2, NULL);
  CPX_CHECK_INT(cpx_pool_report(p, c1.state, 0, CPX_POOL_QUOTA, 0), 1000);
  CPX_CHECK_INT(cpx_pool_report(p, c2.state, 0, CPX_POOL_QUOTA, 0), 1000);
  for (int i = 0; i < 40; i++) {
    fake_now += d + 1;
    if (cpx_pool_pick(p, "m", NULL, &c1, NULL) != 0) {
      CPX_CHECK(0);
      break;
    }
    d = cpx_pool_report(p, c1.state, c1.probe, CPX_POOL_QUOTA, 0);
  }
  CPX_CHECK_INT(d, CPX_POOL_QUOTA_MAX_MS);
  cpx_pool_free(p);
}

static void test_fixed_cooldowns_and_hint(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a"};
  cpx_pool_choice_t c;
  add(p, "a", 0, 1);
  group(p, "m", ids, 1);
  struct {
    int result;
    uint64_t hint, want;
  } cases[] = {
      {CPX_POOL_AUTH, 0, CPX_POOL_AUTH_MS},
      {CPX_POOL_NOTFOUND, 0, CPX_POOL_NOTFOUND_MS},
      {CPX_POOL_TRANSIENT, 0, CPX_POOL_TRANSIENT_MS},
      {CPX_POOL_QUOTA, 42000, 42000},
      {CPX_POOL_TRANSIENT, 5000, 5000},
      {CPX_POOL_NEUTRAL, 0, 0},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    cpx_pool_clear(p, NULL);
    CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
    CPX_CHECK_INT(
        cpx_pool_report(p, c.state, c.probe, cases[i].result, cases[i].hint),
        cases[i].want);
    CPX_CHECK_INT(cpx_pool_group_wait(p, "m"), cases[i].want);
  }
  CPX_CHECK_INT(cpx_pool_clear(p, "a"), 0);
  cpx_pool_free(p);
}

static void test_disable_cooling(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a", "b"};
  cpx_pool_account_t nb = {"b", "test", 0, 1, 0, 1};
  cpx_pool_choice_t c;
  add(p, "a", 0, 1);
  cpx_pool_account(p, &nb);
  group(p, "m", ids, 2);
  cpx_pool_configure(p, CPX_POOL_FILL_FIRST, 0, 0);
  /* Per account: b never cools. */
  {
    uint32_t ex[] = {0};
    cpx_pool_pick_t req = {ex, 1, NULL, 0, -1};
    CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
    CPX_CHECK_INT(c.member, 1);
    CPX_CHECK_INT(cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0), 0);
  }
  /* Globally: a does not cool either. */
  cpx_pool_configure(p, CPX_POOL_FILL_FIRST, 1, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  CPX_CHECK_INT(cpx_pool_report(p, c.state, c.probe, CPX_POOL_AUTH, 0), 0);
  CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK), 0);
  cpx_pool_free(p);
}

static void test_weighted(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a", "b", "c"};
  int count[3] = {0, 0, 0};
  add(p, "a", 0, 5);
  add(p, "b", 0, 3);
  add(p, "c", 0, 2);
  group(p, "m", ids, 3);
  cpx_pool_configure(p, CPX_POOL_WEIGHTED, 0, 0);
  for (int i = 0; i < 1000; i++) {
    int m = pick_ok(p, "m", CPX_POOL_OK);
    if (m >= 0)
      count[m]++;
  }
  CPX_CHECK_INT(count[0], 500);
  CPX_CHECK_INT(count[1], 300);
  CPX_CHECK_INT(count[2], 200);
  cpx_pool_free(p);
}

static void test_affinity(void) {
  cpx_pool_t *p = mkpool();
  const char *ids[] = {"a", "b", "c"};
  cpx_pool_choice_t c;
  cpx_pool_pick_t req = {NULL, 0, "session-1", 9, -1};
  uint32_t first;
  for (int i = 0; i < 3; i++)
    add(p, ids[i], 0, 1);
  group(p, "m", ids, 3);
  cpx_pool_configure(p, CPX_POOL_ROUND_ROBIN, 0, 3600 * 1000);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
  CPX_CHECK_INT(c.affinity, 0);
  first = c.member;
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  for (int i = 0; i < 5; i++) {
    CPX_CHECK_INT(pick_ok(p, "m", CPX_POOL_OK) >= 0, 1); /* moves the cursor */
    CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
    CPX_CHECK_INT(c.member, first);
    CPX_CHECK_INT(c.affinity, 1);
    cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  }
  /* The bound account cools down: fail over and rebind. */
  CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_AUTH, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
  CPX_CHECK(c.member != first);
  CPX_CHECK_INT(c.affinity, 0);
  first = c.member;
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
  CPX_CHECK_INT(c.member, first);
  CPX_CHECK_INT(c.affinity, 1);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  /* The binding expires after its TTL. */
  fake_now += 3600 * 1000;
  CPX_CHECK_INT(cpx_pool_pick(p, "m", &req, &c, NULL), 0);
  CPX_CHECK_INT(c.affinity, 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  cpx_pool_free(p);
}

static void test_shared_state_across_groups(void) {
  cpx_pool_t *p = mkpool();
  cpx_pool_member_t m1[] = {{"a", "up-1"}, {"a", "up-2"}};
  cpx_pool_member_t m2[] = {{"a", "up-1"}};
  cpx_pool_choice_t c;
  add(p, "a", 0, 1);
  CPX_CHECK_INT(cpx_pool_set_group(p, "alias", m1, 2), 0);
  CPX_CHECK_INT(cpx_pool_set_group(p, "team/alias", m2, 1), 0);
  cpx_pool_configure(p, CPX_POOL_FILL_FIRST, 0, 0);
  CPX_CHECK_INT(cpx_pool_pick(p, "team/alias", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_TRANSIENT, 0);
  /* (a, up-1) cools for both names; the alias pool falls to up-2. */
  CPX_CHECK_INT(cpx_pool_pick(p, "alias", NULL, &c, NULL), 0);
  CPX_CHECK_INT(c.member, 1);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
  /* Unknown account in a group. */
  {
    cpx_pool_member_t bad[] = {{"zz", "x"}};
    CPX_CHECK_INT(cpx_pool_set_group(p, "bad", bad, 1), CPX_EINVAL);
  }
  cpx_pool_free(p);
}

static void *hammer(void *arg) {
  cpx_pool_t *p = arg;
  for (int i = 0; i < 20000; i++) {
    cpx_pool_choice_t c;
    if (cpx_pool_pick(p, "m", NULL, &c, NULL) == 0)
      cpx_pool_report(p, c.state, c.probe,
                      i % 97 == 0 ? CPX_POOL_TRANSIENT : CPX_POOL_OK, 0);
  }
  return NULL;
}

static void test_threads(void) {
  cpx_pool_t *p;
  const char *ids[] = {"a", "b", "c", "d"};
  pthread_t th[4];
  cpx_pool_state_info_t si;
  cpx_pool_new(&p);
  for (int i = 0; i < 4; i++)
    add(p, ids[i], 0, 1);
  group(p, "m", ids, 4);
  for (int i = 0; i < 4; i++)
    pthread_create(&th[i], NULL, hammer, p);
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++) {
    CPX_CHECK_INT(cpx_pool_get_state(p, ids[i], "up", &si), 0);
    CPX_CHECK_INT(si.inflight, 0);
  }
  cpx_pool_free(p);
}

/* ---- bench --------------------------------------------------------------- */

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void bench_one(const char *label, int strategy, int naccts,
                      int cooling_pct, int with_report) {
  cpx_pool_t *p;
  cpx_pool_member_t *m = calloc((size_t)naccts, sizeof(*m));
  char(*ids)[32] = calloc((size_t)naccts, 32);
  const int iters = 2000000;
  double t0, t1;
  int ok = 0;

  cpx_pool_new(&p);
  for (int i = 0; i < naccts; i++) {
    cpx_pool_account_t a = {NULL, "bench", 0, 1 + i % 4, 0, 0};
    snprintf(ids[i], 32, "account-%05d", i);
    a.id = ids[i];
    cpx_pool_account(p, &a);
    m[i].account = ids[i];
    m[i].model = "gpt-bench";
  }
  cpx_pool_set_group(p, "gpt-bench", m, (size_t)naccts);
  cpx_pool_configure(p, strategy, 0, 0);
  /* Cool a share of the accounts (every k-th one) for the whole run. */
  for (int i = 0; i < naccts * cooling_pct / 100; i++) {
    cpx_pool_choice_t c;
    if (cpx_pool_pick(p, "gpt-bench", NULL, &c, NULL) == 0)
      cpx_pool_report(p, c.state, c.probe, CPX_POOL_AUTH, 0);
  }
  t0 = now_ns();
  for (int i = 0; i < iters; i++) {
    cpx_pool_choice_t c;
    if (cpx_pool_pick(p, "gpt-bench", NULL, &c, NULL) == 0) {
      ok++;
      if (with_report)
        cpx_pool_report(p, c.state, c.probe, CPX_POOL_OK, 0);
    }
  }
  t1 = now_ns();
  printf("  %-28s %5d accounts, %3d%% cooling: %7.1f ns/%s (%d picks)\n", label,
         naccts, cooling_pct, (t1 - t0) / iters,
         with_report ? "pick+report" : "pick", ok);
  cpx_pool_free(p);
  free(m);
  free(ids);
}

static int bench(int naccts) {
  printf("cpx_pool selection benchmark (one thread, uncontended mutex)\n");
  bench_one("round-robin", CPX_POOL_ROUND_ROBIN, naccts, 0, 1);
  bench_one("round-robin", CPX_POOL_ROUND_ROBIN, naccts, 0, 0);
  bench_one("fill-first", CPX_POOL_FILL_FIRST, naccts, 0, 1);
  bench_one("weighted-round-robin", CPX_POOL_WEIGHTED, naccts, 0, 1);
  bench_one("round-robin", CPX_POOL_ROUND_ROBIN, naccts, 50, 1);
  bench_one("round-robin (1 left)", CPX_POOL_ROUND_ROBIN, naccts, 99, 1);
  return 0;
}

/* Cooldowns survive a restart through auth-dir/.cliproxy-cooldowns.json:
 * a new pool (a new process) with the same accounts gets them back, less
 * the time that passed; unknown accounts are skipped; nothing cooling means
 * no file. */
static void test_cooldowns_kept_in_a_file(void) {
  char dir[] = "/tmp/cpx_test_pool_XXXXXX", path[256];
  const char *ids[] = {"acct:a", "acct:b"};
  cpx_pool_t *p = mkpool(), *q;
  cpx_pool_state_info_t si;
  cpx_pool_choice_t c;
  struct stat st;
  FILE *f;

  CPX_CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof(path), "%s/%s", dir, CPX_POOL_FILE);
  add(p, ids[0], 0, 1);
  add(p, ids[1], 0, 1);
  group(p, "m", ids, 2);
  /* nothing cools yet: no file */
  CPX_CHECK_INT(cpx_pool_save_file(p, dir), 0);
  CPX_CHECK(stat(path, &st) != 0);
  /* a: quota with the upstream's 60 s; b: two 429s without a hint */
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 60000);
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0);
  fake_now += 2000;
  CPX_CHECK_INT(cpx_pool_pick(p, "m", NULL, &c, NULL), 0);
  cpx_pool_report(p, c.state, c.probe, CPX_POOL_QUOTA, 0);
  CPX_CHECK_INT(cpx_pool_save_file(p, dir), 0);
  CPX_CHECK_INT(stat(path, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0600);

  /* the next process: other clock origin, same accounts, one more */
  q = mkpool();
  fake_now = 5;
  add(q, ids[1], 0, 1);
  add(q, ids[0], 0, 1);
  add(q, "acct:new", 0, 1);
  {
    const char *ids2[] = {"acct:a", "acct:b", "acct:new"};
    group(q, "m", ids2, 3);
  }
  CPX_CHECK_INT(cpx_pool_load_file(q, dir), 2);
  CPX_CHECK_INT(cpx_pool_get_state(q, "acct:a", "up", &si), 0);
  CPX_CHECK(si.remaining_ms > 57000 && si.remaining_ms <= 58000);
  CPX_CHECK_INT(si.quota, 1);
  CPX_CHECK_INT(si.reason, CPX_POOL_QUOTA);
  CPX_CHECK_INT(cpx_pool_get_state(q, "acct:b", "up", &si), 0);
  CPX_CHECK_INT(si.level, 2); /* the 429 ladder goes on where it was */
  CPX_CHECK(si.remaining_ms > 0 && si.remaining_ms <= 2000);
  CPX_CHECK_INT(cpx_pool_get_state(q, "acct:new", "up", &si), 0);
  CPX_CHECK_INT(si.remaining_ms, 0);
  /* only the new account is picked while the others cool */
  CPX_CHECK_INT(pick_ok(q, "m", CPX_POOL_OK), 2);

  /* everything clears: the file goes */
  cpx_pool_clear(q, NULL);
  CPX_CHECK_INT(cpx_pool_save_file(q, dir), 0);
  CPX_CHECK(stat(path, &st) != 0);

  /* a broken file is an error, not a crash; a missing one is 0 */
  f = fopen(path, "w");
  fputs("{\"states\": [ {\"account\": 1", f);
  fclose(f);
  CPX_CHECK_INT(cpx_pool_load_file(q, dir), CPX_EPARSE);
  unlink(path);
  CPX_CHECK_INT(cpx_pool_load_file(q, dir), 0);
  rmdir(dir);
  cpx_pool_free(p);
  cpx_pool_free(q);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--bench") == 0)
    return bench(argc > 2 ? atoi(argv[2]) : 1000);
  CPX_TEST_RUN(test_round_robin);
  CPX_TEST_RUN(test_fill_first_and_disabled);
  CPX_TEST_RUN(test_priority_tiers);
  CPX_TEST_RUN(test_quota_backoff_and_probe);
  CPX_TEST_RUN(test_backoff_cap_and_burst);
  CPX_TEST_RUN(test_fixed_cooldowns_and_hint);
  CPX_TEST_RUN(test_disable_cooling);
  CPX_TEST_RUN(test_weighted);
  CPX_TEST_RUN(test_affinity);
  CPX_TEST_RUN(test_shared_state_across_groups);
  CPX_TEST_RUN(test_threads);
  CPX_TEST_RUN(test_cooldowns_kept_in_a_file);
  CPX_TEST_DONE();
}
