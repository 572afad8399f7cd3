/* cpx_fetch_opts.c: an upstream request's options from a Lua table (see
 * cpx_fetch_opts.h). */
#include "cpx_fetch_opts.h"

#include <string.h>

#include <lauxlib.h>

#include "cpx_lua_int.h"

/* A number of seconds (or bytes, scale 1) at t[k], else dflt. */
static double opt_num(lua_State *L, int idx, const char *k, double dflt) {
  double v;
  lua_getfield(L, idx, k);
  v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

void cpx_lua_fetch_opts(lua_State *L, int idx, const char *fn,
                        const cpx_fetch_defaults_t *d, cpx_fetch_opts_t *o,
                        cpx_header_t *hdrs, int max) {
  int nh;

  luaL_checktype(L, idx, LUA_TTABLE);
  memset(o, 0, sizeof(*o));
  lua_getfield(L, idx, "url");
  o->url = lua_tostring(L, -1);
  lua_getfield(L, idx, "method");
  o->method = lua_tostring(L, -1);
  lua_getfield(L, idx, "body");
  if (lua_isstring(L, -1))
    o->body = lua_tolstring(L, -1, &o->body_len);
  lua_getfield(L, idx, "proxy");
  o->proxy = lua_tostring(L, -1);
  lua_getfield(L, idx, "headers");
  if (!o->url)
    luaL_error(L, "%s: url is required", fn);
  nh = cpx__read_headers(L, lua_gettop(L), hdrs, max);
  if (nh < 0)
    luaL_error(L, "%s: headers must be a table", fn);
  o->headers = hdrs;
  o->nheaders = (size_t)nh;
  o->connect_timeout_ms = (uint64_t)(opt_num(L, idx, "connect_timeout",
                                             d->connect_timeout_ms / 1000.0) *
                                     1000);
  o->first_byte_timeout_ms =
      (uint64_t)(opt_num(L, idx, "first_byte_timeout",
                         d->first_byte_timeout_ms / 1000.0) *
                 1000);
  o->idle_timeout_ms =
      (uint64_t)(opt_num(L, idx, "idle_timeout", d->idle_timeout_ms / 1000.0) *
                 1000);
  o->max_body = (size_t)opt_num(L, idx, "max_body", (double)d->max_body);
}
