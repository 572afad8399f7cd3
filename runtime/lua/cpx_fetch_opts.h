/* cpx_fetch_opts.h: the one reader of an upstream request's options from
 * a Lua table, shared by cpx.fetch (cpx_fetch_lua.c) and `cliproxy
 * login`'s io.request (app/cpx_login.c), so an option is added in one
 * place. */
#ifndef CPX_FETCH_OPTS_H
#define CPX_FETCH_OPTS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "cpx_upstream.h"

/* What an option the table leaves out becomes. */
typedef struct {
  uint64_t connect_timeout_ms;
  uint64_t first_byte_timeout_ms;
  uint64_t idle_timeout_ms;
  size_t max_body;
} cpx_fetch_defaults_t;

/* Reads {method=, url=, headers=, body=, proxy=, connect_timeout=,
 * first_byte_timeout=, idle_timeout= (seconds), max_body=} at idx (a
 * table; absolute index) into *o, the headers into hdrs (at most max; the
 * forms of cpx__read_headers). The strings *o points to stay owned by Lua:
 * the five fields read (url, method, body, proxy, headers) are left pushed
 * on the stack, so they live as long as the caller keeps them there.
 * Raises a Lua error naming fn ("cpx.fetch") when url is missing or
 * headers is not a table. */
void cpx_lua_fetch_opts(lua_State *L, int idx, const char *fn,
                        const cpx_fetch_defaults_t *d, cpx_fetch_opts_t *o,
                        cpx_header_t *hdrs, int max);

#endif /* CPX_FETCH_OPTS_H */
