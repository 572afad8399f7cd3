/* cpx_lock.c: see cpx_lock.h. */
#include "cpx_lock.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <uv.h>

struct cpx_lock_s {
  cpx_lock_t *next; /* in the process table */
  int fd;           /* the flocked lock file, or -1 */
  char name[CPX_LOCK_MAX_NAME];
};

static uv_mutex_t table_mu;
static uv_once_t table_once = UV_ONCE_INIT;
static cpx_lock_t *table; /* held locks; guarded by table_mu */
static int table_n;

static void table_init(void) {
  if (uv_mutex_init(&table_mu) != 0)
    abort();
}

static cpx_lock_t **find(const char *name) {
  cpx_lock_t **pp = &table;
  while (*pp && strcmp((*pp)->name, name) != 0)
    pp = &(*pp)->next;
  return pp;
}

/* open(2) and flock(2) with LOCK_NB on a local file return at once; the
 * attempt runs on the caller's loop for that reason (a waiting caller
 * polls, it never sleeps in here). */
static int flock_file(const char *file, int *fd_out) {
  int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return -errno;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd);
    return e == EWOULDBLOCK ? CPX_EAGAIN : -e;
  }
  *fd_out = fd;
  return 0;
}

int cpx_lock_try(const char *name, const char *file, cpx_lock_t **out) {
  cpx_lock_t *lk;
  int rc = 0;

  *out = NULL;
  if (strlen(name) >= CPX_LOCK_MAX_NAME)
    return CPX_ELIMIT;
  uv_once(&table_once, table_init);
  lk = calloc(1, sizeof(*lk));
  if (!lk)
    return CPX_ENOMEM;
  memcpy(lk->name, name, strlen(name) + 1);
  lk->fd = -1;
  uv_mutex_lock(&table_mu);
  if (*find(name))
    rc = CPX_EAGAIN;
  else if (table_n >= CPX_LOCK_MAX_HELD)
    rc = CPX_ELIMIT;
  else if (file)
    rc = flock_file(file, &lk->fd);
  if (rc == 0) {
    lk->next = table;
    table = lk;
    table_n++;
  }
  uv_mutex_unlock(&table_mu);
  if (rc != 0) {
    free(lk);
    return rc;
  }
  *out = lk;
  return 0;
}

void cpx_lock_release(cpx_lock_t *lk) {
  cpx_lock_t **pp;
  if (!lk)
    return;
  uv_mutex_lock(&table_mu);
  /* The flock goes before the name: a waiter in this process that sees
   * the name free must also find the file free. */
  if (lk->fd >= 0) {
    flock(lk->fd, LOCK_UN);
    close(lk->fd);
    lk->fd = -1;
  }
  pp = &table;
  while (*pp && *pp != lk)
    pp = &(*pp)->next;
  if (*pp) {
    *pp = lk->next;
    table_n--;
  }
  uv_mutex_unlock(&table_mu);
  free(lk);
}

const char *cpx_lock_name(const cpx_lock_t *lk) {
  return lk->name;
}

int cpx_lock_count(void) {
  int n;
  uv_once(&table_once, table_init);
  uv_mutex_lock(&table_mu);
  n = table_n;
  uv_mutex_unlock(&table_mu);
  return n;
}
