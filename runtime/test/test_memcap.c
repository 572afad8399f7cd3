/* test_memcap.c: the Lua VM's memory cap (cpx_memcap.c): its admission
 * rules, and a real LuaJIT state with the JIT on that a hot function fills
 * up to the cap, entered from C the way the server enters a VM (safe
 * points around each call): every call past the cap fails with
 * LUA_ERRMEM, none crashes, and once the data is released calls succeed
 * again with the JIT back on. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>

#include "cpx_memcap.h"
#include "cpx_test.h"

#define MiB (1024u * 1024u)

static void test_rules(void) {
  int host = 0;
  cpx_memcap_t c;
  memset(&c, 0, sizeof(c));
  c.limit = 8 * MiB;
  c.host = &host;
  c.used = 8 * MiB - 100;

  /* under the limit, and exactly at it */
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 100), 1);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 50, 150), 1);
  /* past it with the JIT on: granted up to the soft ceiling (1.5x) */
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 101), 1);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 4 * MiB + 100), 1);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 4 * MiB + 101), 0);
  /* past it with the JIT off: refused at once */
  c.jit_off = 1;
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 101), 0);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 10, 111), 0);
  /* frees and shrinks always pass, even far past the limit */
  c.used = 20 * MiB;
  CPX_CHECK_INT(cpx_memcap_admit(&c, 4096, 16), 1);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 4096, 4096), 1);
  CPX_CHECK_INT(cpx_memcap_admit(&c, 4096, 0), 1);
  /* the host's own work outside a protected call is never refused */
  host = 1;
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 1 * MiB), 1);
  host = 0;
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 1 * MiB), 0);
  /* no limit: everything passes */
  c.limit = 0;
  CPX_CHECK_INT(cpx_memcap_admit(&c, 0, 1 * MiB), 1);
}

/* lua_pcall of global fn between two safe points, as cpx_vm_enter/leave
 * bracket every entry of the server; returns the pcall's code. */
static int call(cpx_memcap_t *c, lua_State *L, const char *fn, int *events) {
  int rc;
  *events |= cpx_memcap_safepoint(c, L);
  lua_getglobal(L, fn);
  rc = lua_pcall(L, 0, 0, 0);
  if (rc != 0)
    lua_pop(L, 1);
  *events |= cpx_memcap_safepoint(c, L);
  return rc;
}

static void test_full_vm(void) {
  cpx_memcap_t c;
  int host = 0, events = 0, ok = 0, errmem = 0, other = 0, rc;
  lua_State *L = luaL_newstate();

  memset(&c, 0, sizeof(c));
  luaL_openlibs(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
  cpx_memcap_attach(&c, L, 0, &host);
  /* A module-level table that every "request" appends to, in a loop hot
   * enough to be compiled. */
  CPX_CHECK_INT(luaL_dostring(L, "kept = {}\n"
                                 "function add()\n"
                                 "  for i = 1, 16 do\n"
                                 "    kept[#kept + 1] = string.rep('x', 200) "
                                 ".. #kept\n"
                                 "  end\n"
                                 "end\n"
                                 "function release() kept = {} end\n"
                                 "function small() local t = {1, 2, 3} "
                                 "return #t end\n"),
                0);
  c.limit = c.used + 8 * MiB;
  for (int i = 0; i < 20000; i++) {
    rc = call(&c, L, "add", &events);
    if (rc == 0)
      ok++;
    else if (rc == LUA_ERRMEM)
      errmem++;
    else
      other++;
    CPX_CHECK(c.used <= c.limit + c.limit / 2);
  }
  /* it filled up, said so, and the JIT was off before the limit was met */
  CPX_CHECK(ok > 100);
  CPX_CHECK(errmem > 100);
  CPX_CHECK_INT(other, 0);
  CPX_CHECK(events & CPX_MEMCAP_JIT_OFF);
  CPX_CHECK(events & CPX_MEMCAP_REFUSED);
  CPX_CHECK_INT(c.jit_off, 1);
  CPX_CHECK(c.refused > 0);
  /* released: the next calls work and the JIT comes back */
  events = 0;
  CPX_CHECK_INT(call(&c, L, "release", &events), 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  CPX_CHECK_INT(call(&c, L, "small", &events), 0);
  CPX_CHECK(events & CPX_MEMCAP_JIT_ON);
  CPX_CHECK_INT(c.jit_off, 0);
  CPX_CHECK_INT(call(&c, L, "add", &events), 0);
  CPX_CHECK(c.used < c.limit / 2);
  cpx_memcap_detach(&c, L);
  lua_close(L);
}

int main(void) {
  CPX_TEST_RUN(test_rules);
  CPX_TEST_RUN(test_full_vm);
  CPX_TEST_DONE();
}
