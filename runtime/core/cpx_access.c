/* cpx_access.c: the client key a request presents (see cpx_access.h). */
#include "cpx_access.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <uv.h>

static unsigned char secure_key[32];
static uv_once_t secure_once = UV_ONCE_INIT;
static int secure_ready;

static void secure_init(void) {
  secure_ready = RAND_bytes(secure_key, sizeof(secure_key)) == 1;
}

int cpx_secure_ready(void) {
  uv_once(&secure_once, secure_init);
  return secure_ready;
}

int cpx_secure_equal(const char *a, size_t na, const char *b, size_t nb) {
  unsigned char ha[32], hb[32];
  unsigned int la = 0, lb = 0;
  if (!cpx_secure_ready())
    return 0;
  HMAC(EVP_sha256(), secure_key, sizeof(secure_key), (const unsigned char *)a,
       na, ha, &la);
  HMAC(EVP_sha256(), secure_key, sizeof(secure_key), (const unsigned char *)b,
       nb, hb, &lb);
  return la == 32 && lb == 32 && CRYPTO_memcmp(ha, hb, 32) == 0;
}

/* Lua's %s: what rt.access skipped after "Bearer" before this moved here */
static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
         c == '\f';
}

int cpx_client_key(const char *auth, size_t auth_n, const char *goog,
                   size_t goog_n, const char *xapi, size_t xapi_n,
                   const char **key, size_t *key_n) {
  if (auth && auth_n > 6 && (auth[0] == 'B' || auth[0] == 'b') &&
      memcmp(auth + 1, "earer", 5) == 0 && is_space(auth[6])) {
    const char *k = auth + 6;
    size_t n = auth_n - 6;
    while (n && is_space(*k)) {
      k++;
      n--;
    }
    if (n) {
      *key = k;
      *key_n = n;
      return CPX_KEY_AUTHORIZATION;
    }
  }
  if (goog) {
    *key = goog;
    *key_n = goog_n;
    return CPX_KEY_GOOG;
  }
  if (xapi) {
    *key = xapi;
    *key_n = xapi_n;
    return CPX_KEY_X_API_KEY;
  }
  *key = NULL;
  *key_n = 0;
  return CPX_KEY_NONE;
}
