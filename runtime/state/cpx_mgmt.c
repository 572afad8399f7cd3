/* cpx_mgmt.c: bcrypt, the verified-key cache, the failed-attempt table and
 * config.yaml I/O for the management API (see cpx_mgmt.h; cpx.mgmt is
 * runtime/lua/cpx_mgmt_lua.c). */
#include "cpx_mgmt.h"

#include <crypt.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <uv.h>

#include "cpx.h"
#include "cpx_log.h"
#include "cpx_store.h"

/* Verified keys kept; a panel and a script or two need a handful. */
#define CACHE_SLOTS 16
/* Addresses tracked; the least recently seen one that is not banned makes
 * room (a banned one only when every slot is banned). */
#define BAN_SLOTS 1024
/* bcrypt checks in the threadpool at once, process-wide: a flood of wrong
 * keys must not occupy libuv's (4) threads that file I/O also needs. */
#define MAX_VERIFY_INFLIGHT 2
#define MAX_HASH_LEN CPX_MGMT_MAX_HASH_LEN
#define MAX_CONFIG_BYTES (16 * 1024 * 1024)

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t mu;
static atomic_int verify_inflight;

static void init_once(void) {
  uv_mutex_init(&mu);
}

/* ---- bcrypt ----------------------------------------------------------------
 */

int cpx_bcrypt_hash(const char *pw, size_t pwlen, int cost, char *out,
                    size_t outlen) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  struct crypt_data *cd;
  const char *h;
  int rc = 0;

  if (memchr(pw, '\0', pwlen) != NULL || cost < 4 || cost > 31)
    return CPX_EINVAL;
  /* NULL random bytes: libxcrypt reads the OS's CSPRNG. */
  if (!crypt_gensalt_rn("$2b$", (unsigned long)cost, NULL, 0, salt,
                        (int)sizeof(salt)))
    return CPX_EIO;
  cd = calloc(1, sizeof(*cd));
  if (!cd)
    return CPX_ENOMEM;
  h = crypt_rn(pw, salt, cd, (int)sizeof(*cd));
  if (!h || h[0] == '*')
    rc = CPX_EIO;
  else if (strlen(h) >= outlen)
    rc = CPX_ELIMIT;
  else
    snprintf(out, outlen, "%s", h);
  OPENSSL_cleanse(cd, sizeof(*cd));
  free(cd);
  return rc;
}

int cpx_bcrypt_verify(const char *pw, size_t pwlen, const char *hash) {
  struct crypt_data *cd;
  const char *h;
  size_t n = strlen(hash);
  int ok = 0;

  if (memchr(pw, '\0', pwlen) != NULL || n == 0 || n > MAX_HASH_LEN)
    return 0;
  cd = calloc(1, sizeof(*cd));
  if (!cd)
    return 0;
  h = crypt_rn(pw, hash, cd, (int)sizeof(*cd));
  /* A failure is "*0"/"*1", never equal to a real hash. */
  if (h && strlen(h) == n && CRYPTO_memcmp(h, hash, n) == 0)
    ok = 1;
  OPENSSL_cleanse(cd, sizeof(*cd));
  free(cd);
  return ok;
}

/* ---- verified-key cache ----------------------------------------------------
 */

static struct {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  char hash[MAX_HASH_LEN + 1];
  uint64_t used; /* 0: empty */
} cache[CACHE_SLOTS];
static uint64_t cache_tick;

int cpx_mgmt_cache_has(const char *key, size_t keylen, const char *hash) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  int hit = 0;

  SHA256((const unsigned char *)key, keylen, d);
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  /* Every slot is compared, so the time says nothing about which matched. */
  for (int i = 0; i < CACHE_SLOTS; i++) {
    int same = cache[i].used != 0 &&
               CRYPTO_memcmp(cache[i].digest, d, sizeof(d)) == 0 &&
               strcmp(cache[i].hash, hash) == 0;
    if (same) {
      cache[i].used = ++cache_tick;
      hit = 1;
    }
  }
  uv_mutex_unlock(&mu);
  OPENSSL_cleanse(d, sizeof(d));
  return hit;
}

void cpx_mgmt_cache_put(const char *key, size_t keylen, const char *hash) {
  int slot = 0;

  if (strlen(hash) > MAX_HASH_LEN)
    return;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  for (int i = 1; i < CACHE_SLOTS; i++)
    if (cache[i].used < cache[slot].used)
      slot = i;
  SHA256((const unsigned char *)key, keylen, cache[slot].digest);
  snprintf(cache[slot].hash, sizeof(cache[slot].hash), "%s", hash);
  cache[slot].used = ++cache_tick;
  uv_mutex_unlock(&mu);
}

void cpx_mgmt_cache_clear(void) {
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  OPENSSL_cleanse(cache, sizeof(cache));
  uv_mutex_unlock(&mu);
}

/* ---- failed attempts -------------------------------------------------------
 */

static struct {
  char addr[64]; /* "" : empty */
  int count;
  double banned_until; /* 0: not banned */
  double seen;
} bans[BAN_SLOTS];

/* Caller holds mu. Returns the slot of addr, or -1. */
static int ban_find(const char *addr) {
  for (int i = 0; i < BAN_SLOTS; i++)
    if (bans[i].addr[0] && strcmp(bans[i].addr, addr) == 0)
      return i;
  return -1;
}

double cpx_mgmt_banned(const char *addr, double now) {
  double left = 0;
  int i;

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  i = ban_find(addr);
  if (i >= 0 && bans[i].banned_until > 0) {
    if (now < bans[i].banned_until) {
      left = bans[i].banned_until - now;
    } else {
      bans[i].banned_until = 0; /* served its time: start over */
      bans[i].count = 0;
    }
  }
  uv_mutex_unlock(&mu);
  return left;
}

int cpx_mgmt_fail(const char *addr, double now) {
  int i, n;

  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  i = ban_find(addr);
  if (i < 0) {
    int victim = -1;
    for (int j = 0; j < BAN_SLOTS; j++) {
      if (!bans[j].addr[0]) {
        victim = j;
        break;
      }
      if (bans[j].banned_until <= now &&
          (victim < 0 || bans[j].seen < bans[victim].seen))
        victim = j;
    }
    if (victim < 0) { /* all banned: the oldest goes */
      victim = 0;
      for (int j = 1; j < BAN_SLOTS; j++)
        if (bans[j].seen < bans[victim].seen)
          victim = j;
    }
    i = victim;
    memset(&bans[i], 0, sizeof(bans[i]));
    snprintf(bans[i].addr, sizeof(bans[i].addr), "%s", addr);
  }
  bans[i].seen = now;
  n = ++bans[i].count;
  if (n >= CPX_MGMT_MAX_FAILURES) {
    bans[i].banned_until = now + CPX_MGMT_BAN_SECONDS;
    bans[i].count = 0;
    n = 0;
  }
  uv_mutex_unlock(&mu);
  return n;
}

void cpx_mgmt_reset(const char *addr) {
  int i;
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  if ((i = ban_find(addr)) >= 0)
    memset(&bans[i], 0, sizeof(bans[i]));
  uv_mutex_unlock(&mu);
}

void cpx_mgmt_bans_clear(void) {
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  memset(bans, 0, sizeof(bans));
  uv_mutex_unlock(&mu);
}

/* ---- config I/O ----------------------------------------------------------
 */

static void hex(const unsigned char *d, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Reads path whole into *out (malloc, NUL-terminated). */
static int read_whole(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  char *buf;
  size_t n;
  int rc = 0;

  *out = NULL;
  *len = 0;
  if (!f)
    return -errno;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return CPX_EINVAL;
  }
  if (st.st_size > MAX_CONFIG_BYTES) {
    fclose(f);
    return CPX_ELIMIT;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    fclose(f);
    return CPX_ENOMEM;
  }
  n = fread(buf, 1, (size_t)st.st_size, f);
  if (ferror(f))
    rc = CPX_EIO;
  fclose(f);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

static void file_sha(const char *p, size_t n, char *out) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)p, n, d);
  hex(d, sizeof(d), out);
}

int cpx_mgmt_read_file(const char *path, char **out, size_t *len,
                       char sha[CPX_MGMT_SHA_HEX]) {
  int rc = read_whole(path, out, len);
  if (rc == 0)
    file_sha(*out, *len, sha);
  return rc;
}

/* The compare-and-swap is under mu, so two workers' writes are ordered; a
 * write from outside (an editor) between read and write is caught too. */
int cpx_mgmt_write_file(const char *path, const char *text, size_t len,
                        const char *expect, int mode_arg,
                        char sha[CPX_MGMT_SHA_HEX]) {
  char dirbuf[PATH_MAX], basebuf[PATH_MAX];
  struct stat st;
  unsigned mode = 0600;
  int rc;

  if (snprintf(dirbuf, sizeof(dirbuf), "%s", path) >= (int)sizeof(dirbuf))
    return CPX_ELIMIT;
  snprintf(basebuf, sizeof(basebuf), "%s", path);
  uv_once(&once, init_once);
  uv_mutex_lock(&mu);
  if (mode_arg >= 0)
    mode = (unsigned)mode_arg;
  else if (stat(path, &st) == 0)
    mode = (unsigned)(st.st_mode & 0777);
  if (expect && expect[0]) {
    char *cur;
    size_t curlen;
    char cursha[CPX_MGMT_SHA_HEX];
    int r = read_whole(path, &cur, &curlen);
    if (r != 0) {
      uv_mutex_unlock(&mu);
      return r;
    }
    file_sha(cur, curlen, cursha);
    free(cur);
    if (strcmp(cursha, expect) != 0) {
      uv_mutex_unlock(&mu);
      return CPX_ESTATE;
    }
  }
  rc = cpx_write_atomic(dirname(dirbuf), basename(basebuf), text, len, mode);
  uv_mutex_unlock(&mu);
  if (rc == 0)
    file_sha(text, len, sha);
  return rc;
}

/* ---- where read_file / write_file / clear_logs may go ------------------
 * rt.management sets the places (cpx.mgmt.allow) (auth-dir, the logs directory,
 * config.yaml) at every load: a path is allowed when it is one of the files, or
 * a plain name (not a symlink) directly inside one of the directories, both
 * sides resolved with realpath in the threadpool. Until the first allow() call
 * (busted, cliproxy check) every path is allowed. */
#define MAX_ALLOWED CPX_MGMT_MAX_ALLOWED
static pthread_mutex_t allow_mu = PTHREAD_MUTEX_INITIALIZER;
static char *allowed[MAX_ALLOWED];
static int nallowed = -1; /* -1: never set */

static int same_real(const char *a, const char *b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  return realpath(a, ra) && realpath(b, rb) && strcmp(ra, rb) == 0;
}

int cpx_mgmt_path_allowed(const char *path, int is_dir) {
  char dir[PATH_MAX];
  const char *base;
  int ok = 0;
  struct stat st;
  pthread_mutex_lock(&allow_mu);
  if (nallowed < 0) {
    pthread_mutex_unlock(&allow_mu);
    return 1;
  }
  base = strrchr(path, '/');
  if (base) {
    size_t n = (size_t)(base - path);
    if (n >= sizeof(dir))
      n = sizeof(dir) - 1;
    memcpy(dir, path, n);
    dir[n ? n : 1] = '\0';
    if (n == 0)
      dir[0] = '/';
    base++;
  } else {
    snprintf(dir, sizeof(dir), ".");
    base = path;
  }
  for (int i = 0; i < nallowed && !ok; i++) {
    if (same_real(path, allowed[i])) {
      ok = 1; /* the file itself (config.yaml) or an allowed directory */
    } else if (!is_dir && base[0] != '\0' && base[0] != '.' &&
               same_real(dir, allowed[i])) {
      /* a plain name inside an allowed directory, not a link out of it */
      ok = lstat(path, &st) != 0 || !S_ISLNK(st.st_mode);
    }
  }
  pthread_mutex_unlock(&allow_mu);
  return ok;
}

void cpx_mgmt_allow(const char *const *paths, int n) {
  char *v[MAX_ALLOWED];
  int k = 0;
  for (int i = 0; i < n && i < MAX_ALLOWED; i++)
    if (paths[i] && paths[i][0] && (v[k] = strdup(paths[i])) != NULL)
      k++;
  pthread_mutex_lock(&allow_mu);
  for (int i = 0; i < (nallowed > 0 ? nallowed : 0); i++)
    free(allowed[i]);
  for (int i = 0; i < k; i++)
    allowed[i] = v[i];
  nallowed = k;
  pthread_mutex_unlock(&allow_mu);
}

int cpx_mgmt_verify_begin(void) {
  if (atomic_fetch_add(&verify_inflight, 1) >= MAX_VERIFY_INFLIGHT) {
    atomic_fetch_sub(&verify_inflight, 1);
    return 0;
  }
  return 1;
}

void cpx_mgmt_verify_end(void) {
  atomic_fetch_sub(&verify_inflight, 1);
}

const char *cpx_mgmt_env_secret(size_t *len) {
  const char *v = getenv("MANAGEMENT_PASSWORD");
  size_t n;
  if (!v)
    return NULL;
  while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')
    v++;
  n = strlen(v);
  while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\n' ||
                   v[n - 1] == '\r'))
    n--;
  if (n == 0)
    return NULL;
  *len = n;
  return v;
}
