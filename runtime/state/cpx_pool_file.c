/* cpx_pool_file.c: the pool's cooldowns kept across restarts (limits sheet
 * 3.3), so that a restart does not send the next requests to accounts that
 * are known to be exhausted.
 *
 *   <auth-dir>/.cliproxy-cooldowns.json  (0600, written atomically)
 *   {"version":1,"saved_at":<unix ms>,"states":[
 *     {"account":"...","model":"...","until":<unix ms>,"level":n,
 *      "reason":n,"quota":true|false}, ...]}
 *
 * Times are wall-clock in the file (the pool's own clock is monotonic and
 * starts anew with the process). The name starts with a dot, which the
 * credential store ignores. Written by worker 0 when the pool changed
 * (main.c), read once at start by rt.registry.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "cpx_pool.h"
#include "cpx_store.h"

#define MAX_FILE (4 * 1024 * 1024)

static uint64_t wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

typedef struct {
  yajl_gen g;
  uint64_t now;
} save_t;

static void gen_str(yajl_gen g, const char *s) {
  yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static void gen_int(yajl_gen g, const char *key, long long v) {
  gen_str(g, key);
  yajl_gen_integer(g, v);
}

static void save_one(void *ud, const char *account, const char *model,
                     uint64_t remaining_ms, int level, int reason, int quota) {
  save_t *sv = ud;
  yajl_gen g = sv->g;
  yajl_gen_map_open(g);
  gen_str(g, "account");
  gen_str(g, account);
  gen_str(g, "model");
  gen_str(g, model);
  gen_int(g, "until", (long long)(remaining_ms ? sv->now + remaining_ms : 0));
  gen_int(g, "level", level);
  gen_int(g, "reason", reason);
  gen_str(g, "quota");
  yajl_gen_bool(g, quota);
  yajl_gen_map_close(g);
}

int cpx_pool_save_file(cpx_pool_t *p, const char *dir) {
  save_t sv = {yajl_gen_alloc(NULL), wall_ms()};
  const unsigned char *buf;
  size_t len;
  int n, rc;

  if (!sv.g)
    return CPX_ENOMEM;
  yajl_gen_map_open(sv.g);
  gen_int(sv.g, "version", 1);
  gen_int(sv.g, "saved_at", (long long)sv.now);
  gen_str(sv.g, "states");
  yajl_gen_array_open(sv.g);
  n = cpx_pool_each_cooling(p, save_one, &sv);
  yajl_gen_array_close(sv.g);
  yajl_gen_map_close(sv.g);
  if (n == 0) {
    /* Nothing cools: no file (a stale one would come back at start). */
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, CPX_POOL_FILE);
    rc = unlink(path) == 0 || errno == ENOENT ? 0 : -errno;
  } else if (yajl_gen_get_buf(sv.g, &buf, &len) != yajl_gen_status_ok) {
    rc = CPX_EINVAL; /* an id that is not UTF-8: nothing written */
  } else {
    rc = cpx_store_write_file(dir, CPX_POOL_FILE, (const char *)buf, len);
  }
  yajl_gen_free(sv.g);
  return rc;
}

static const char *str_of(yajl_val o, const char *key) {
  const char *path[] = {key, NULL};
  yajl_val v = yajl_tree_get(o, path, yajl_t_string);
  return v ? YAJL_GET_STRING(v) : NULL;
}

static long long int_of(yajl_val o, const char *key) {
  const char *path[] = {key, NULL};
  yajl_val v = yajl_tree_get(o, path, yajl_t_number);
  return v && YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : 0;
}

int cpx_pool_load_file(cpx_pool_t *p, const char *dir) {
  static const char *states_path[] = {"states", NULL};
  char path[4096], err[128];
  char *text;
  struct stat st;
  ssize_t got;
  yajl_val doc, states;
  uint64_t now = wall_ms();
  int fd, restored = 0;

  snprintf(path, sizeof(path), "%s/%s", dir, CPX_POOL_FILE);
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return errno == ENOENT ? 0 : -errno;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE) {
    close(fd);
    return CPX_EINVAL;
  }
  text = malloc((size_t)st.st_size + 1);
  if (!text) {
    close(fd);
    return CPX_ENOMEM;
  }
  got = read(fd, text, (size_t)st.st_size);
  close(fd);
  if (got != st.st_size) {
    free(text);
    return CPX_EIO;
  }
  text[got] = 0;
  doc = yajl_tree_parse(text, err, sizeof(err));
  free(text);
  if (!doc)
    return CPX_EPARSE;
  states = yajl_tree_get(doc, states_path, yajl_t_array);
  for (size_t i = 0; states && i < YAJL_GET_ARRAY(states)->len; i++) {
    yajl_val e = YAJL_GET_ARRAY(states)->values[i];
    const char *account = str_of(e, "account"), *model = str_of(e, "model");
    long long until = int_of(e, "until"), level = int_of(e, "level");
    const char *qpath[] = {"quota", NULL};
    yajl_val q = yajl_tree_get(e, qpath, yajl_t_true);
    uint64_t left;
    if (!account || !model)
      continue;
    left = until > 0 && (uint64_t)until > now ? (uint64_t)until - now : 0;
    if (left == 0 && level <= 0)
      continue; /* over while we were down */
    if (cpx_pool_restore(p, account, model, left, (int)level,
                         (int)int_of(e, "reason"), q != NULL) == 0)
      restored++;
  }
  yajl_tree_free(doc);
  return restored;
}
