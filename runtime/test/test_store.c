/* test_store.c: loading auth-dir (good, malformed, unsafe files), atomic
 * 0600 writes, rescans and the directory watcher. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cpx_store.h"
#include "cpx_test.h"

static char dir[256];
static char reported[4096];

static void on_report(void *ud, const char *name, const char *reason) {
  size_t n = strlen(reported);
  CPX_UNUSED(ud);
  snprintf(reported + n, sizeof(reported) - n, "%s: %s\n", name, reason);
}

static void put(const char *name, const char *text, mode_t mode) {
  char path[512];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  chmod(path, mode);
}

static void rm_dir(void) {
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", dir);
}

static void fresh_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/cpx-store-XXXXXX");
  if (!mkdtemp(dir))
    abort();
  reported[0] = '\0';
}

static void test_load(void) {
  cpx_store_t *s;
  cpx_store_entry_t *e;
  size_t n;
  fresh_dir();
  put("codex-a.json", "{\"type\":\"codex\",\"access_token\":\"t\"}", 0600);
  put("claude-b.json", "{\"type\":\"claude\",\"disabled\":true}", 0600);
  put("broken.json", "{\"type\":", 0600);
  put("array.json", "[1,2]", 0600);
  put("open.json", "{\"type\":\"codex\"}", 0644);
  put("notes.txt", "not a credential", 0600);
  put(".hidden.json", "{}", 0600);
  put(".x.json.tmp.abcdef", "stale", 0600);
  put(".y.json.tmp.ghijkl", "another process is writing", 0600);
  {
    /* left by a process killed two minutes ago */
    char p[512];
    struct timespec old[2] = {{time(NULL) - 120, 0}, {time(NULL) - 120, 0}};
    snprintf(p, sizeof(p), "%s/.x.json.tmp.abcdef", dir);
    CPX_CHECK_INT(utimensat(AT_FDCWD, p, old, 0), 0);
  }
  CPX_CHECK_INT(cpx_store_open(&s, dir, 0, on_report, NULL), 0);
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 2);
  if (n == 2) {
    CPX_CHECK_STR(e[0].name, "claude-b.json");
    CPX_CHECK_STR(e[0].type, "claude");
    CPX_CHECK_INT(e[0].disabled, 1);
    CPX_CHECK_STR(e[1].name, "codex-a.json");
    CPX_CHECK_STR(e[1].type, "codex");
    CPX_CHECK_INT(e[1].disabled, 0);
    CPX_CHECK(strstr(e[1].text, "access_token") != NULL);
  }
  cpx_store_snapshot_free(e, n);
  CPX_CHECK(strstr(reported, "broken.json: malformed JSON") != NULL);
  CPX_CHECK(strstr(reported, "array.json: not a JSON object") != NULL);
  CPX_CHECK(strstr(reported, "open.json: readable or writable by group") !=
            NULL);
  CPX_CHECK(strstr(reported, "notes.txt") == NULL);
  /* The stale temporary is gone. */
  {
    char p[512];
    snprintf(p, sizeof(p), "%s/.x.json.tmp.abcdef", dir);
    CPX_CHECK(access(p, F_OK) != 0);
    /* a fresh one may be another process's write in flight: kept */
    snprintf(p, sizeof(p), "%s/.y.json.tmp.ghijkl", dir);
    CPX_CHECK(access(p, F_OK) == 0);
  }
  /* A rescan with nothing changed reports nothing again. */
  reported[0] = '\0';
  CPX_CHECK_INT(cpx_store_rescan(s), 0);
  CPX_CHECK_STR(reported, "");
  cpx_store_close(s);
  rm_dir();
}

static void test_write_and_rescan(void) {
  cpx_store_t *s;
  cpx_store_entry_t *e;
  size_t n;
  struct stat st;
  char p[512];
  uint64_t v;
  fresh_dir();
  CPX_CHECK_INT(cpx_store_open(&s, dir, 0, on_report, NULL), 0);
  v = cpx_store_version(s);
  CPX_CHECK_INT(cpx_store_write(s, "k.json", "{\"type\":\"claude\"}", 17), 0);
  CPX_CHECK(cpx_store_version(s) > v);
  snprintf(p, sizeof(p), "%s/k.json", dir);
  CPX_CHECK_INT(stat(p, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0600);
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 1);
  cpx_store_snapshot_free(e, n);
  /* Overwrite in place, then a bad name, then delete. */
  CPX_CHECK_INT(cpx_store_write(s, "k.json", "{\"type\":\"codex\"}", 16), 0);
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 1);
  if (n == 1)
    CPX_CHECK_STR(e[0].type, "codex");
  cpx_store_snapshot_free(e, n);
  CPX_CHECK_INT(cpx_store_write(s, "../evil.json", "{}", 2), CPX_EINVAL);
  CPX_CHECK_INT(cpx_store_write(s, "k.txt", "{}", 2), CPX_EINVAL);
  v = cpx_store_version(s);
  CPX_CHECK_INT(cpx_store_remove(s, "k.json"), 0);
  CPX_CHECK(cpx_store_version(s) > v);
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 0);
  cpx_store_snapshot_free(e, n);
  cpx_store_close(s);
  rm_dir();
}

static int wait_version(cpx_store_t *s, uint64_t above, int ms) {
  struct timespec ts = {0, 10 * 1000000};
  for (int i = 0; i < ms / 10; i++) {
    if (cpx_store_version(s) > above)
      return 1;
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void test_watch(void) {
  cpx_store_t *s;
  cpx_store_entry_t *e;
  size_t n;
  uint64_t v;
  char a[512], b[512];
  fresh_dir();
  CPX_CHECK_INT(cpx_store_open(&s, dir, 1, on_report, NULL), 0);
  v = cpx_store_version(s);
  /* An editor-style save: write a temporary, then rename it over. */
  put("draft.tmp", "{\"type\":\"codex\",\"access_token\":\"x\"}", 0600);
  snprintf(a, sizeof(a), "%s/draft.tmp", dir);
  snprintf(b, sizeof(b), "%s/new.json", dir);
  CPX_CHECK_INT(rename(a, b), 0);
  CPX_CHECK(wait_version(s, v, 3000));
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 1);
  cpx_store_snapshot_free(e, n);
  v = cpx_store_version(s);
  unlink(b);
  CPX_CHECK(wait_version(s, v, 3000));
  CPX_CHECK_INT(cpx_store_snapshot(s, &e, &n), 0);
  CPX_CHECK_INT(n, 0);
  cpx_store_snapshot_free(e, n);
  cpx_store_close(s);
  rm_dir();
}

static void test_expand(void) {
  char out[256];
  const char *home = getenv("HOME");
  char want[256];
  CPX_CHECK_INT(cpx_store_expand_path("~/x", out, sizeof(out)), 0);
  snprintf(want, sizeof(want), "%s/x", home ? home : "~");
  if (home)
    CPX_CHECK_STR(out, want);
  CPX_CHECK_INT(cpx_store_expand_path("/abs/~x", out, sizeof(out)), 0);
  CPX_CHECK_STR(out, "/abs/~x");
}

int main(void) {
  CPX_TEST_RUN(test_load);
  CPX_TEST_RUN(test_write_and_rescan);
  CPX_TEST_RUN(test_watch);
  CPX_TEST_RUN(test_expand);
  CPX_TEST_DONE();
}
