/* test_lock.c: named locks inside the process (threads) and across
 * processes (a lock file, fork). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "cpx_lock.h"
#include "cpx_test.h"

static char dir[256], file[300];

static void fresh_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/cpx-lock-XXXXXX");
  if (!mkdtemp(dir))
    abort();
  snprintf(file, sizeof(file), "%s/.a.json.lock", dir);
}

static void rm_dir(void) {
  unlink(file);
  rmdir(dir);
}

static void test_names(void) {
  cpx_lock_t *a, *b, *c;
  char longname[CPX_LOCK_MAX_NAME + 8];
  CPX_CHECK_INT(cpx_lock_try("refresh:a", NULL, &a), 0);
  CPX_CHECK_STR(cpx_lock_name(a), "refresh:a");
  CPX_CHECK_INT(cpx_lock_try("refresh:a", NULL, &b), CPX_EAGAIN);
  CPX_CHECK(b == NULL);
  CPX_CHECK_INT(cpx_lock_try("refresh:b", NULL, &c), 0);
  CPX_CHECK_INT(cpx_lock_count(), 2);
  cpx_lock_release(a);
  CPX_CHECK_INT(cpx_lock_try("refresh:a", NULL, &b), 0);
  cpx_lock_release(b);
  cpx_lock_release(c);
  CPX_CHECK_INT(cpx_lock_count(), 0);
  memset(longname, 'x', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  CPX_CHECK_INT(cpx_lock_try(longname, NULL, &a), CPX_ELIMIT);
}

static void test_file_mode(void) {
  cpx_lock_t *a;
  struct stat st;
  fresh_dir();
  CPX_CHECK_INT(cpx_lock_try("f", file, &a), 0);
  CPX_CHECK_INT(stat(file, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0600);
  cpx_lock_release(a);
  /* The file stays (see cpx_lock.h), the lock does not. */
  CPX_CHECK_INT(stat(file, &st), 0);
  CPX_CHECK_INT(cpx_lock_try("f", file, &a), 0);
  cpx_lock_release(a);
  CPX_CHECK_INT(cpx_lock_try("f", "/nonexistent-dir/x.lock", &a), -ENOENT);
  rm_dir();
}

/* A child process tries the file while the parent holds it, then again
 * after the parent released it. The pipes order the steps. */
static void test_across_processes(void) {
  int to_child[2], to_parent[2];
  char c;
  pid_t pid;
  cpx_lock_t *a;
  int status;
  fresh_dir();
  if (pipe(to_child) != 0 || pipe(to_parent) != 0)
    abort();
  CPX_CHECK_INT(cpx_lock_try("p", file, &a), 0);
  pid = fork();
  if (pid == 0) {
    cpx_lock_t *b = NULL;
    /* A fresh process: the name table is empty; only the file can say
     * the lock is taken. The child inherited no lock of its own. */
    int r1 = cpx_lock_try("p-child", file, &b);
    char res = r1 == CPX_EAGAIN ? 'b' : 'x';
    if (write(to_parent[1], &res, 1) != 1 || read(to_child[0], &res, 1) != 1)
      _exit(2);
    r1 = cpx_lock_try("p-child", file, &b);
    res = r1 == 0 ? 'g' : 'x';
    if (r1 == 0)
      cpx_lock_release(b);
    if (write(to_parent[1], &res, 1) != 1)
      _exit(2);
    _exit(0);
  }
  CPX_CHECK(pid > 0);
  CPX_CHECK_INT(read(to_parent[0], &c, 1), 1);
  CPX_CHECK_INT(c, 'b');
  cpx_lock_release(a);
  CPX_CHECK_INT(write(to_child[1], "go", 1), 1);
  CPX_CHECK_INT(read(to_parent[0], &c, 1), 1);
  CPX_CHECK_INT(c, 'g');
  waitpid(pid, &status, 0);
  CPX_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(to_child[0]);
  close(to_child[1]);
  close(to_parent[0]);
  close(to_parent[1]);
  rm_dir();
}

/* Threads spin on one name: never two inside at once, and every thread
 * gets in as often as it asked. */
static atomic_int inside, most, entries;

static void contend(void *arg) {
  CPX_UNUSED(arg);
  for (int i = 0; i < 200; i++) {
    cpx_lock_t *lk;
    while (cpx_lock_try("shared", file, &lk) != 0)
      uv_sleep(0);
    int now = atomic_fetch_add(&inside, 1) + 1;
    int m = atomic_load(&most);
    while (now > m && !atomic_compare_exchange_weak(&most, &m, now))
      ;
    atomic_fetch_add(&entries, 1);
    atomic_fetch_sub(&inside, 1);
    cpx_lock_release(lk);
  }
}

static void test_threads(void) {
  uv_thread_t t[4];
  fresh_dir();
  for (int i = 0; i < 4; i++)
    uv_thread_create(&t[i], contend, NULL);
  for (int i = 0; i < 4; i++)
    uv_thread_join(&t[i]);
  CPX_CHECK_INT(atomic_load(&most), 1);
  CPX_CHECK_INT(atomic_load(&entries), 800);
  CPX_CHECK_INT(cpx_lock_count(), 0);
  rm_dir();
}

int main(void) {
  CPX_TEST_RUN(test_names);
  CPX_TEST_RUN(test_file_mode);
  CPX_TEST_RUN(test_across_processes);
  CPX_TEST_RUN(test_threads);
  CPX_TEST_DONE();
}
