/* test_fetch_opts.c: the one reader of upstream request options
 * (cpx_fetch_opts.c) that cpx.fetch and login's io.request share. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "cpx.h"
#include "cpx_fetch_opts.h"
#include "cpx_test.h"

static const cpx_fetch_defaults_t defaults = {10000, 30000, 30000, 65536};

typedef struct {
  cpx_fetch_opts_t o;
  cpx_header_t h[8];
} got_t;

/* lua_cpcall body: the table is the global t. */
static int read_cp(lua_State *L) {
  got_t *g = lua_touserdata(L, 1);
  lua_getglobal(L, "t");
  cpx_lua_fetch_opts(L, lua_gettop(L), "io.request", &defaults, &g->o, g->h, 8);
  /* the strings stay anchored by the table until the state closes */
  return 0;
}

/* Runs chunk (which sets t), then the reader; returns the cpcall status
 * and leaves an error message in err. */
static int run(lua_State *L, const char *chunk, got_t *g, char *err,
               size_t errlen) {
  int st;
  memset(g, 0, sizeof(*g));
  err[0] = '\0';
  if (luaL_dostring(L, chunk) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    return -1;
  }
  st = lua_cpcall(L, read_cp, g);
  if (st != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return st;
}

static int has_header(const got_t *g, const char *name, const char *value) {
  for (size_t i = 0; i < g->o.nheaders; i++)
    if (g->h[i].name.n == strlen(name) &&
        memcmp(g->h[i].name.p, name, g->h[i].name.n) == 0 &&
        g->h[i].value.n == strlen(value) &&
        memcmp(g->h[i].value.p, value, g->h[i].value.n) == 0)
      return 1;
  return 0;
}

static void reads_every_option(void) {
  lua_State *L = luaL_newstate();
  got_t g;
  char err[256];
  CPX_CHECK_INT(run(L,
                    "t = { url = 'https://x.test/token', method = 'PUT',"
                    " body = 'a=1', proxy = 'direct',"
                    " headers = { Accept = 'application/json',"
                    "             ['X-Multi'] = { 'one', 'two' } },"
                    " connect_timeout = 2.5, first_byte_timeout = 7,"
                    " idle_timeout = 0.25, max_body = 1024 }",
                    &g, err, sizeof(err)),
                0);
  CPX_CHECK_STR(g.o.url, "https://x.test/token");
  CPX_CHECK_STR(g.o.method, "PUT");
  CPX_CHECK_MEM(g.o.body, g.o.body_len, "a=1", 3);
  CPX_CHECK_STR(g.o.proxy, "direct");
  CPX_CHECK_INT(g.o.nheaders, 3);
  CPX_CHECK(has_header(&g, "Accept", "application/json"));
  CPX_CHECK(has_header(&g, "X-Multi", "one"));
  CPX_CHECK(has_header(&g, "X-Multi", "two"));
  CPX_CHECK_INT(g.o.connect_timeout_ms, 2500);
  CPX_CHECK_INT(g.o.first_byte_timeout_ms, 7000);
  CPX_CHECK_INT(g.o.idle_timeout_ms, 250);
  CPX_CHECK_INT(g.o.max_body, 1024);
  lua_close(L);
}

static void defaults_fill_the_rest(void) {
  lua_State *L = luaL_newstate();
  got_t g;
  char err[256];
  CPX_CHECK_INT(
      run(L, "t = { url = 'http://127.0.0.1:1/' }", &g, err, sizeof(err)), 0);
  CPX_CHECK(g.o.method == NULL); /* cpx_fetch_start picks GET or POST */
  CPX_CHECK(g.o.body == NULL);
  CPX_CHECK(g.o.proxy == NULL);
  CPX_CHECK_INT(g.o.nheaders, 0);
  CPX_CHECK_INT(g.o.connect_timeout_ms, 10000);
  CPX_CHECK_INT(g.o.first_byte_timeout_ms, 30000);
  CPX_CHECK_INT(g.o.idle_timeout_ms, 30000);
  CPX_CHECK_INT(g.o.max_body, 65536);
  lua_close(L);
}

static void misuse_names_the_caller(void) {
  lua_State *L = luaL_newstate();
  got_t g;
  char err[256];
  CPX_CHECK(run(L, "t = { method = 'GET' }", &g, err, sizeof(err)) != 0);
  CPX_CHECK(strstr(err, "io.request: url is required") != NULL);
  CPX_CHECK(run(L, "t = { url = 'http://h/', headers = 'Accept: x' }", &g, err,
                sizeof(err)) != 0);
  CPX_CHECK(strstr(err, "io.request: headers must be a table") != NULL);
  CPX_CHECK(run(L, "t = 'not a table'", &g, err, sizeof(err)) != 0);
  CPX_CHECK(strstr(err, "table expected") != NULL);
  lua_close(L);
}

static void headers_are_bounded(void) {
  lua_State *L = luaL_newstate();
  got_t g;
  char err[256];
  CPX_CHECK_INT(run(L,
                    "t = { url = 'http://h/', headers = {} }"
                    " for i = 1, 20 do t.headers['H' .. i] = 'v' end",
                    &g, err, sizeof(err)),
                0);
  CPX_CHECK_INT(g.o.nheaders, 8); /* the array's size, never past it */
  lua_close(L);
}

int main(void) {
  CPX_TEST_RUN(reads_every_option);
  CPX_TEST_RUN(defaults_fill_the_rest);
  CPX_TEST_RUN(misuse_names_the_caller);
  CPX_TEST_RUN(headers_are_bounded);
  CPX_TEST_DONE();
}
