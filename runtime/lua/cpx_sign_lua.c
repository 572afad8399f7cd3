/* cpx_sign_lua.c: `cpx.rsa_sha256_sign`, RS256 signatures for JWT bearer
 * grants (RFC 7523): a Google service account signs its token request with
 * its private key (Vertex AI imports, rt.mgmt.vertex and
 * providers/vertex_sa.lua).
 *
 *   cpx.rsa_sha256_sign(pem, data) -> signature (raw bytes) | nil, err
 *
 * pem is a PKCS#8 or PKCS#1 RSA private key in PEM, as a service-account
 * JSON's private_key holds it. The signature is RSASSA-PKCS1-v1_5 over
 * SHA-256 (JWT "RS256"). OpenSSL does the work; nothing is kept between
 * calls, and the key's bytes are not copied beyond OpenSSL's own parse
 * (freed before returning). Costs about a millisecond for a 2048-bit key,
 * so it runs on the loop (a token is minted at most every ~55 minutes per
 * account). Bounded: pem at most 16 KiB, data at most 64 KiB.
 */
#include <lauxlib.h>
#include <lua.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "cpx_bindings.h"

#define MAX_PEM (16 * 1024)
#define MAX_DATA (64 * 1024)

static int fail(lua_State *L, const char *what) {
  char buf[256];
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e) {
    ERR_error_string_n(e, buf, sizeof(buf));
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, buf);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, what);
  }
  return 2;
}

static int l_rsa_sha256_sign(lua_State *L) {
  size_t plen, dlen, slen = 0;
  const char *pem = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &dlen);
  BIO *bio;
  EVP_PKEY *key;
  EVP_MD_CTX *md;
  unsigned char *sig;
  int ok;

  if (plen == 0 || plen > MAX_PEM)
    return luaL_argerror(L, 1, "a PEM private key of at most 16 KiB");
  if (dlen > MAX_DATA)
    return luaL_argerror(L, 2, "at most 64 KiB");
  bio = BIO_new_mem_buf(pem, (int)plen);
  if (!bio)
    return fail(L, "out of memory");
  /* No passphrase callback: an encrypted key fails instead of prompting. */
  key = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
  BIO_free(bio);
  if (!key)
    return fail(L, "not a PEM private key");
  if (EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    return fail(L, "not an RSA key");
  }
  md = EVP_MD_CTX_new();
  ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
       EVP_DigestSign(md, NULL, &slen, (const unsigned char *)data, dlen) == 1;
  sig = ok ? OPENSSL_malloc(slen) : NULL;
  ok = sig &&
       EVP_DigestSign(md, sig, &slen, (const unsigned char *)data, dlen) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  if (!ok) {
    OPENSSL_free(sig);
    return fail(L, "signing failed");
  }
  lua_pushlstring(L, (const char *)sig, slen);
  OPENSSL_free(sig);
  return 1;
}

void cpx_sign_lua_register(lua_State *L) {
  lua_pushcfunction(L, l_rsa_sha256_sign);
  lua_setfield(L, -2, "rsa_sha256_sign");
}
