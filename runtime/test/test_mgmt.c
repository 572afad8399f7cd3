/* test_mgmt.c: bcrypt, the verified-key cache and the failed-attempt table
 * of the management API (cpx_mgmt.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpx.h"
#include "cpx_mgmt.h"
#include "cpx_test.h"

static void test_bcrypt(void) {
  char h[128], h2[128];
  CPX_CHECK_INT(cpx_bcrypt_hash("s3cret", 6, 4, h, sizeof(h)), 0);
  CPX_CHECK(strncmp(h, "$2b$04$", 7) == 0);
  CPX_CHECK_INT(strlen(h), 60);
  CPX_CHECK_INT(cpx_bcrypt_verify("s3cret", 6, h), 1);
  CPX_CHECK_INT(cpx_bcrypt_verify("s3creT", 6, h), 0);
  CPX_CHECK_INT(cpx_bcrypt_verify("", 0, h), 0);
  /* a NUL inside the key never matches the prefix before it */
  CPX_CHECK_INT(cpx_bcrypt_verify("s3cret\0x", 8, h), 0);
  CPX_CHECK_INT(cpx_bcrypt_verify("s3cret", 6, "not a hash"), 0);
  CPX_CHECK_INT(cpx_bcrypt_verify("s3cret", 6, ""), 0);
  /* salted: the same key hashes differently each time */
  CPX_CHECK_INT(cpx_bcrypt_hash("s3cret", 6, 4, h2, sizeof(h2)), 0);
  CPX_CHECK(strcmp(h, h2) != 0);
  CPX_CHECK_INT(cpx_bcrypt_verify("s3cret", 6, h2), 1);
  CPX_CHECK_INT(cpx_bcrypt_hash("x", 1, 3, h, sizeof(h)), CPX_EINVAL);
  CPX_CHECK_INT(cpx_bcrypt_hash("x", 1, 4, h, 10), CPX_ELIMIT);
  /* $2a$ hashes (Go's golang.org/x/crypto/bcrypt writes them) verify too:
   * a test vector of OpenWall's crypt_blowfish */
  CPX_CHECK_INT(cpx_bcrypt_verify("U*U", 3,
                                  "$2a$05$CCCCCCCCCCCCCCCCCCCCC."
                                  "E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
                1);
}

static void test_cache(void) {
  cpx_mgmt_cache_clear();
  CPX_CHECK_INT(cpx_mgmt_cache_has("k1", 2, "$2b$h1"), 0);
  cpx_mgmt_cache_put("k1", 2, "$2b$h1");
  CPX_CHECK_INT(cpx_mgmt_cache_has("k1", 2, "$2b$h1"), 1);
  /* another hash (the secret changed) or another key: a miss */
  CPX_CHECK_INT(cpx_mgmt_cache_has("k1", 2, "$2b$h2"), 0);
  CPX_CHECK_INT(cpx_mgmt_cache_has("k2", 2, "$2b$h1"), 0);
  /* bounded: 40 more keys push the first out */
  for (int i = 0; i < 40; i++) {
    char k[16];
    snprintf(k, sizeof(k), "key-%d", i);
    cpx_mgmt_cache_put(k, strlen(k), "$2b$h1");
  }
  CPX_CHECK_INT(cpx_mgmt_cache_has("k1", 2, "$2b$h1"), 0);
  CPX_CHECK_INT(cpx_mgmt_cache_has("key-39", 6, "$2b$h1"), 1);
  cpx_mgmt_cache_clear();
  CPX_CHECK_INT(cpx_mgmt_cache_has("key-39", 6, "$2b$h1"), 0);
}

static void test_bans(void) {
  cpx_mgmt_bans_clear();
  CPX_CHECK(cpx_mgmt_banned("10.0.0.1", 100) == 0);
  for (int i = 1; i < CPX_MGMT_MAX_FAILURES; i++)
    CPX_CHECK_INT(cpx_mgmt_fail("10.0.0.1", 100), i);
  CPX_CHECK(cpx_mgmt_banned("10.0.0.1", 100) == 0);
  CPX_CHECK_INT(cpx_mgmt_fail("10.0.0.1", 100), 0); /* the 5th: banned */
  CPX_CHECK(cpx_mgmt_banned("10.0.0.1", 100) == CPX_MGMT_BAN_SECONDS);
  CPX_CHECK(cpx_mgmt_banned("10.0.0.1", 100 + 60) == CPX_MGMT_BAN_SECONDS - 60);
  CPX_CHECK(cpx_mgmt_banned("10.0.0.2", 100) == 0); /* per address */
  /* served: the count starts over */
  CPX_CHECK(cpx_mgmt_banned("10.0.0.1", 100 + CPX_MGMT_BAN_SECONDS) == 0);
  CPX_CHECK_INT(cpx_mgmt_fail("10.0.0.1", 2000), 1);
  /* a success forgets the failures */
  cpx_mgmt_reset("10.0.0.1");
  CPX_CHECK_INT(cpx_mgmt_fail("10.0.0.1", 2000), 1);
  /* bounded: a flood of addresses does not free a banned one's slot */
  cpx_mgmt_bans_clear();
  for (int i = 0; i < CPX_MGMT_MAX_FAILURES; i++)
    cpx_mgmt_fail("192.0.2.9", 10);
  for (int i = 0; i < 5000; i++) {
    char a[32];
    snprintf(a, sizeof(a), "198.51.%d.%d", i / 256, i % 256);
    cpx_mgmt_fail(a, 20);
  }
  CPX_CHECK(cpx_mgmt_banned("192.0.2.9", 30) > 0);
}

/* Config I/O through the plain C API: read with its SHA-256, a
 * compare-and-swap write, the conflict when the file changed, the allowed
 * places. */
static void test_config_io(void) {
  char dir[64], path[128], other[128], sha[CPX_MGMT_SHA_HEX],
      sha2[CPX_MGMT_SHA_HEX], *text = NULL;
  const char *places[1];
  size_t n = 0;
  struct stat st;
  snprintf(dir, sizeof(dir), "/tmp/cpx-test-mgmt-XXXXXX");
  CPX_CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof(path), "%s/config.yaml", dir);
  snprintf(other, sizeof(other), "%s/../elsewhere.yaml", dir);

  CPX_CHECK_INT(cpx_mgmt_write_file(path, "a: 1\n", 5, NULL, -1, sha), 0);
  CPX_CHECK_INT(stat(path, &st), 0);
  CPX_CHECK_INT(st.st_mode & 0777, 0600); /* a new file */
  CPX_CHECK_INT(cpx_mgmt_read_file(path, &text, &n, sha2), 0);
  CPX_CHECK_MEM(text, n, "a: 1\n", 5);
  CPX_CHECK_STR(sha, sha2);
  free(text);
  /* the expected hash matches: written */
  CPX_CHECK_INT(cpx_mgmt_write_file(path, "a: 2\n", 5, sha, -1, sha2), 0);
  /* the old hash again: the file changed meanwhile */
  CPX_CHECK_INT(cpx_mgmt_write_file(path, "a: 3\n", 5, sha, -1, sha),
                CPX_ESTATE);
  CPX_CHECK_INT(cpx_mgmt_read_file(path, &text, &n, sha), 0);
  CPX_CHECK_MEM(text, n, "a: 2\n", 5);
  free(text);

  places[0] = dir;
  cpx_mgmt_allow(places, 1);
  CPX_CHECK_INT(cpx_mgmt_path_allowed(path, 0), 1);
  CPX_CHECK_INT(cpx_mgmt_path_allowed(other, 0), 0);
  CPX_CHECK_INT(cpx_mgmt_path_allowed(dir, 1), 1);
  unlink(path);
  rmdir(dir);
}

static void test_verify_slots(void) {
  CPX_CHECK_INT(cpx_mgmt_verify_begin(), 1);
  CPX_CHECK_INT(cpx_mgmt_verify_begin(), 1);
  CPX_CHECK_INT(cpx_mgmt_verify_begin(), 0); /* two at once, process-wide */
  cpx_mgmt_verify_end();
  CPX_CHECK_INT(cpx_mgmt_verify_begin(), 1);
  cpx_mgmt_verify_end();
  cpx_mgmt_verify_end();
}

static void test_env_secret(void) {
  size_t n = 0;
  const char *v;
  setenv("MANAGEMENT_PASSWORD", " \tpw-1\n", 1);
  v = cpx_mgmt_env_secret(&n);
  CPX_CHECK(v != NULL);
  if (v)
    CPX_CHECK_MEM(v, n, "pw-1", 4);
  setenv("MANAGEMENT_PASSWORD", "  ", 1);
  CPX_CHECK(cpx_mgmt_env_secret(&n) == NULL);
  unsetenv("MANAGEMENT_PASSWORD");
  CPX_CHECK(cpx_mgmt_env_secret(&n) == NULL);
}

int main(void) {
  CPX_TEST_RUN(test_config_io);
  CPX_TEST_RUN(test_verify_slots);
  CPX_TEST_RUN(test_env_secret);
  CPX_TEST_RUN(test_bcrypt);
  CPX_TEST_RUN(test_cache);
  CPX_TEST_RUN(test_bans);
  CPX_TEST_DONE();
}
