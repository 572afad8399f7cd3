/* test_reqlog.c: the per-request log files through their plain C API
 * (cpx_reqlog.c): a write with no loop happens at once, then list, read
 * and find see it; the bounds refuse what they must. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpx.h"
#include "cpx_reqlog.h"
#include "cpx_test.h"

static char dir[64];

static void write_list_read_find(void) {
  cpx_reqlog_entry_t *v = NULL;
  char name[256], *text = NULL, sub[128];
  size_t len = 0;
  struct stat st;
  int n, jobs;
  size_t bytes;

  snprintf(sub, sizeof(sub), "%s/logs", dir); /* created 0700 */
  CPX_CHECK_INT(
      cpx_reqlog_write(NULL, sub, "v1-chat-aaaa0001.log", "one", 3, NULL, 0),
      0);
  CPX_CHECK_INT(
      cpx_reqlog_write(NULL, sub, "v1-chat-aaaa0002.log", "two!", 4, "", 0), 0);
  CPX_CHECK_INT(stat(sub, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0700);
  cpx_reqlog_pending(&jobs, &bytes); /* written now: nothing waits */
  CPX_CHECK_INT(jobs, 0);
  CPX_CHECK_INT(bytes, 0);

  n = cpx_reqlog_list(sub, "v1-chat-", &v);
  CPX_CHECK_INT(n, 2);
  if (n == 2) {
    CPX_CHECK(v[0].mtime >= v[1].mtime);
    CPX_CHECK(v[0].size == 3 || v[0].size == 4);
  }
  free(v);
  CPX_CHECK_INT(cpx_reqlog_list(sub, "error-", &v), 0);
  free(v);

  CPX_CHECK_INT(cpx_reqlog_read(sub, "v1-chat-aaaa0002.log", &text, &len), 0);
  CPX_CHECK_MEM(text, len, "two!", 4);
  free(text);
  CPX_CHECK_INT(cpx_reqlog_read(sub, "nope.log", &text, &len), -ENOENT);

  CPX_CHECK_INT(
      cpx_reqlog_find(sub, "-aaaa0001.log", name, sizeof(name), &text, &len),
      0);
  CPX_CHECK_STR(name, "v1-chat-aaaa0001.log");
  CPX_CHECK_MEM(text, len, "one", 3);
  free(text);
  CPX_CHECK_INT(
      cpx_reqlog_find(sub, "-ffff.log", name, sizeof(name), &text, &len),
      -ENOENT);

  /* prune after a write: only the newest `keep` stay */
  CPX_CHECK_INT(cpx_reqlog_write(NULL, sub, "v1-chat-aaaa0003.log", "3", 1,
                                 "v1-chat-", 1),
                0);
  CPX_CHECK_INT(cpx_reqlog_list(sub, "v1-chat-", &v), 1);
  free(v);
  CPX_CHECK_INT(cpx_reqlog_prune(sub, "v1-chat-", 0), 1);
  rmdir(sub);
}

static void refusals(void) {
  static char big[(16 << 20) + 1];
  CPX_CHECK_INT(cpx_reqlog_write(NULL, dir, "../x.log", "a", 1, NULL, 0),
                CPX_EINVAL);
  CPX_CHECK_INT(cpx_reqlog_write(NULL, dir, "x.txt", "a", 1, NULL, 0),
                CPX_EINVAL);
  CPX_CHECK_INT(cpx_reqlog_write(NULL, dir, "x.log", big, sizeof(big), NULL, 0),
                CPX_ELIMIT);
}

int main(void) {
  snprintf(dir, sizeof(dir), "/tmp/cpx-test-reqlog-XXXXXX");
  if (!mkdtemp(dir))
    return 1;
  CPX_TEST_RUN(write_list_read_find);
  CPX_TEST_RUN(refusals);
  rmdir(dir);
  CPX_TEST_DONE();
}
