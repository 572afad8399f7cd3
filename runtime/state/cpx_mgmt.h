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

/* ---- config I/O (blocking: call from a threadpool job) ----------------- */

#define CPX_MGMT_SHA_HEX 65 /* a SHA-256 in hex with its NUL */
#define CPX_MGMT_MAX_HASH_LEN 128
#define CPX_MGMT_MAX_ALLOWED 8

/* Reads path (a regular file of at most 16 MiB) into a malloc'd,
 * NUL-terminated *out and its SHA-256 (hex) into sha. 0 or negative. */
int cpx_mgmt_read_file(const char *path, char **out, size_t *len,
                       char sha[CPX_MGMT_SHA_HEX]);
/* Writes text atomically (tmp + fsync + rename + dir fsync) with mode
 * (-1: the file's own bits; a new file 0600); with expect (NULL or "":
 * none) only while the file still has that SHA-256, else CPX_ESTATE.
 * Writes are ordered process-wide. On 0, sha is the new text's SHA-256. */
int cpx_mgmt_write_file(const char *path, const char *text, size_t len,
                        const char *expect, int mode,
                        char sha[CPX_MGMT_SHA_HEX]);
/* The places read_file / write_file / clear_logs may touch from now on,
 * process-wide (at most CPX_MGMT_MAX_ALLOWED; copied): a path is allowed
 * when it is one of them, or a plain name (not a symlink) directly inside
 * one of the directories, both resolved with realpath. Until the first
 * call every path is allowed (busted, cliproxy check). */
void cpx_mgmt_allow(const char *const *paths, int n);
int cpx_mgmt_path_allowed(const char *path, int is_dir);

/* A slot for one bcrypt check in the threadpool: at most 2 at once,
 * process-wide, so a flood of wrong keys cannot occupy libuv's threads.
 * begin: 1 when taken (end gives it back), 0 when busy. */
int cpx_mgmt_verify_begin(void);
void cpx_mgmt_verify_end(void);

/* MANAGEMENT_PASSWORD without surrounding blanks (*len bytes, not
 * NUL-terminated there), or NULL when unset or blank. */
const char *cpx_mgmt_env_secret(size_t *len);

#endif /* CPX_MGMT_H */
