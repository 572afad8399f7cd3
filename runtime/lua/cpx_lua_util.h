/* cpx_lua_util.h: the non-yielding part of the `cpx` Lua API.
 *
 * cpx_lua_util_open pushes one table with json, base64, sha256/hmac, uuid,
 * clock and SSE-framer functions. The server (cpx_co.c and the binding
 * files it registers) adds the yielding and request-bound functions to
 * that same table; the busted test module (lua_module/cpx_module.c)
 * returns it as is.
 *
 *   cpx.json.decode(s)          -> value | nil, err  (arrays carry
 *                                  cpx.json.array_mt, JSON null is
 * cpx.json.null) cpx.json.encode(v)          -> string | nil, err (a table with
 * array_mt, or a non-empty sequence, is an array; an empty table without it is
 * {}) cpx.json.null, cpx.json.array_mt, cpx.json.array(t) -> t (sets array_mt)
 *   cpx.base64.encode(s[, url]), cpx.base64.decode(s) -> string | nil, err
 *   cpx.sha256(s) -> 32 raw bytes, cpx.sha256_hex(s), cpx.hmac_sha256(k, s),
 *   cpx.hmac_sha256_hex(k, s), cpx.uuid() -> v4 string,
 *   cpx.random_bytes(n), cpx.now() -> wall seconds (float),
 *   cpx.monotonic() -> seconds (float) from an arbitrary origin,
 *   cpx.sse.new([max_event]) -> framer; framer:feed(bytes) -> list of
 *                                  {event=, data=, id=, retry=} | nil, err
 *                                  (event, id, retry are absent when the
 *                                  stream did not set them; no event means
 *                                  the WHATWG type "message"; after an error
 *                                  the framer keeps returning nil, err)
 *   cpx.jsonarr.new([max]) -> framer; framer:feed(bytes) -> list of strings
 *                                  | nil, err (max/max_event default 8 MiB)
 *
 * JSON details: integers below 2^53 print without exponent, other numbers
 * with the fewest digits (15..17) that read back exactly; NaN/inf, invalid
 * UTF-8 and nesting past 1000 give nil, err. Decode errors read
 * "json: <reason> at byte N".
 *
 * Stack: pushes exactly one value. Needs 8 free slots.
 */
#ifndef CPX_LUA_UTIL_H
#define CPX_LUA_UTIL_H

#include <stddef.h>

#include <lua.h>

int cpx_lua_util_open(lua_State *L);

/* JSON for C callers (used by the server for its own error bodies). The
 * value at idx is encoded into a malloc'd string the caller frees. */
int cpx_json_encode_value(lua_State *L, int idx, char **out, size_t *outlen);
/* Decodes JSON and pushes the value; on failure pushes nothing and returns
 * CPX_EPARSE with a message in err. */
int cpx_json_decode_push(lua_State *L, const char *s, size_t n, char *err,
                         size_t errlen);

/* Strings of at least this many bytes (quotes included) are checked and
 * unescaped by the decoder itself, a word at a time, instead of being
 * lexed by yajl; 0 gives every string to yajl. The result is the same
 * either way (test_json and the json fuzz target compare the two); only
 * tests change it (cpx.json.long_min). Per thread. */
extern _Thread_local size_t cpx_json_long_min;

/* A random (version 4) UUID, 36 characters and a NUL, as cpx.uuid gives.
 * Returns 0 or CPX_EIO (no randomness). */
int cpx_uuid_v4(char out[37]);

#endif /* CPX_LUA_UTIL_H */
