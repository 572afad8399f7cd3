/* cpx_http_lua.c: `cpx.http`, the response header sets that C owns, for
 * the Lua side (rt.http), so each list exists once (cpx_server.h):
 *
 *   cpx.http.cors_headers  {name = value}  CORS as CLIProxyAPI sends it
 *   cpx.http.sse_headers   {name = value}  an SSE answer's head (CORS too)
 *
 * Fresh tables on every registration (each VM generation and the busted
 * module); Lua treats them as read-only. */
#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_lua_util.h"
#include "cpx_server.h"

static void push_headers(lua_State *L, const cpx_header_t *h, size_t n) {
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    lua_pushlstring(L, h[i].name.p, h[i].name.n);
    lua_pushlstring(L, h[i].value.p, h[i].value.n);
    lua_rawset(L, -3);
  }
}

void cpx_http_lua_register(lua_State *L) {
  /* CORS is the prefix of the JSON set (CPX_JSON_HEADERS_N - 1 entries,
   * the last being Content-Type). */
  lua_createtable(L, 0, 2);
  push_headers(L, cpx_json_headers, CPX_JSON_HEADERS_N - 1);
  lua_setfield(L, -2, "cors_headers");
  push_headers(L, cpx_sse_headers, CPX_SSE_HEADERS_N);
  lua_setfield(L, -2, "sse_headers");
  lua_setfield(L, -2, "http");
}
