/* cpx_mgmt.h: the C side of the management API (lua/rt/management.lua).
 *
 * - bcrypt through libxcrypt: hashing the configured secret-key and
 *   verifying presented keys (the Lua binding runs both in libuv's
 *   threadpool: one check costs ~53 ms at cost 10);
 * - a process-wide cache of verified keys (SHA-256 of the key plus the hash
 *   it matched, compared in constant time), so only the first request with
 *   a key pays for bcrypt;
 * - the failed-attempt table (5 failures from one address: banned 30 min),
 *   process-wide so that neither another worker nor a reload forgets it;
 * - config.yaml read and atomic write with a compare-and-swap on the file's
 *   SHA-256 (two concurrent edits never silently lose one).
 *
 * All functions are thread-safe.
 */
#ifndef CPX_MGMT_H
#define CPX_MGMT_H

#include <stddef.h>

struct lua_State;

#define CPX_MGMT_MAX_FAILURES 5
#define CPX_MGMT_BAN_SECONDS (30 * 60)

/* Hashes pw as "$2b$<cost>$..." into out (>= 64 bytes). 0 or negative. */
int cpx_bcrypt_hash(const char *pw, size_t pwlen, int cost, char *out,
                    size_t outlen);
/* 1 when pw matches hash, 0 when not (or hash is not a crypt hash). */
int cpx_bcrypt_verify(const char *pw, size_t pwlen, const char *hash);

/* The verified-key cache. */
int cpx_mgmt_cache_has(const char *key, size_t keylen, const char *hash);
void cpx_mgmt_cache_put(const char *key, size_t keylen, const char *hash);
void cpx_mgmt_cache_clear(void);

/* Failed attempts per address, on the monotonic clock `now` (seconds).
 * banned: seconds left of a ban (> 0), or 0 (an expired ban is cleared).
 * fail: counts one failure; returns the failures counted so far, or 0 when
 * this one started a ban. reset: forgets the address. */
double cpx_mgmt_banned(const char *addr, double now);
int cpx_mgmt_fail(const char *addr, double now);
void cpx_mgmt_reset(const char *addr);
void cpx_mgmt_bans_clear(void);

/* Registers cpx.mgmt into the table at the top of the stack. */
void cpx_mgmt_lua_register(struct lua_State *L);

#endif /* CPX_MGMT_H */
