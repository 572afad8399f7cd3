/* test_log.c: logging-to-file (cpx_log.c): main.log, rotation past
 * CPX_LOG_ROTATE_BYTES, the total-size cap, clearing in place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utime.h>

#include "cpx.h"
#include "cpx_log.h"
#include "cpx_test.h"

static char dir[64];

static long fsize(const char *name) {
  char p[256];
  struct stat st;
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static int count_rotated(void) {
  char cmd[256];
  FILE *f;
  int n = 0;
  snprintf(cmd, sizeof(cmd), "ls %s | grep -c '^main-'", dir);
  f = popen(cmd, "r");
  if (f) {
    if (fscanf(f, "%d", &n) != 1)
      n = 0;
    pclose(f);
  }
  return n;
}

static void test_rotate_cap_clear(void) {
  char line[1000], old[256];
  FILE *f;
  struct utimbuf ut = {1000, 1000};

  memset(line, 'x', sizeof(line) - 1);
  line[sizeof(line) - 1] = '\0';
  snprintf(dir, sizeof(dir), "/tmp/cpx-test-log-XXXXXX");
  CPX_CHECK(mkdtemp(dir) != NULL);
  /* an old rotated file that the cap will have to drop */
  snprintf(old, sizeof(old), "%s/main-1.log", dir);
  f = fopen(old, "w");
  for (int i = 0; i < 5 * 1024; i++)
    fwrite(line, 1, 1000, f);
  fclose(f);
  utime(old, &ut);

  CPX_CHECK_INT(cpx_log_to_file(dir, 12u * 1024 * 1024), 0);
  cpx_log_rotate_check(); /* small: nothing happens */
  CPX_CHECK_INT(count_rotated(), 1);
  for (int i = 0; i < 11 * 1024; i++)
    cpx_log(CPX_LOG_INFO, NULL, "%s", line);
  cpx_log_flush();
  CPX_CHECK(fsize("main.log") > CPX_LOG_ROTATE_BYTES);
  cpx_log_rotate_check();
  cpx_log(CPX_LOG_INFO, NULL, "after the rotation");
  cpx_log_flush();
  /* rotated: main.log starts over; the old file went for the cap (11 + 5 >
   * 12 MiB), the one just rotated stays */
  CPX_CHECK(fsize("main.log") > 0 && fsize("main.log") < 1000);
  CPX_CHECK_INT(fsize("main-1.log"), -1);
  CPX_CHECK_INT(count_rotated(), 1);

  CPX_CHECK_INT(cpx_log_clear_dir(dir), 2);
  CPX_CHECK_INT(fsize("main.log"), 0);
  CPX_CHECK_INT(count_rotated(), 0);
  cpx_log(CPX_LOG_INFO, NULL, "still logging");
  cpx_log_flush();
  CPX_CHECK(fsize("main.log") > 0); /* the same file, written on */

  CPX_CHECK_INT(cpx_log_to_file(NULL, 0), 0);
  {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CPX_CHECK_INT(system(cmd), 0);
  }
}

int main(void) {
  CPX_TEST_RUN(test_rotate_cap_clear);
  CPX_TEST_DONE();
}
