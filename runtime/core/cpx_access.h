/* cpx_access.h: which client key a request presents in its headers.
 *
 * The one owner of the rule (issue 17): the C relay (cpx_lane.c) calls it
 * with the request's headers, rt.access through cpx.client_key; the query
 * forms (?key=, ?auth_token=) are rt.access's alone, as the relay never
 * takes a request with a query other than Gemini's alt=sse.
 */
#ifndef CPX_ACCESS_H
#define CPX_ACCESS_H

#include <stddef.h>

enum {
  CPX_KEY_NONE = 0,
  CPX_KEY_AUTHORIZATION, /* Authorization: Bearer <key> */
  CPX_KEY_GOOG,          /* X-Goog-Api-Key */
  CPX_KEY_X_API_KEY,     /* X-Api-Key */
};

/* The key among the three header values (each NULL when absent), in
 * CLIProxyAPI's order: a Bearer token, else X-Goog-Api-Key, else
 * X-Api-Key. *key points into the value given. Returns CPX_KEY_*. */
int cpx_client_key(const char *auth, size_t auth_n, const char *goog,
                   size_t goog_n, const char *xapi, size_t xapi_n,
                   const char **key, size_t *key_n);

/* Constant-time equality of two secrets: HMAC-SHA256 of both sides under a
 * per-process random key, then CRYPTO_memcmp of the digests, so neither
 * the bytes nor the length of a key leak through timing. 0 when the
 * process has no randomness (cpx_secure_ready). */
int cpx_secure_equal(const char *a, size_t na, const char *b, size_t nb);
int cpx_secure_ready(void);

#endif /* CPX_ACCESS_H */
