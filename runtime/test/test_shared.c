/* test_shared.c: cpx.shared, the process-wide string table: set, get,
 * delete, keys by prefix, bounds, and two Lua states (as two workers) on
 * the same table from two threads. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>
#include <uv.h>

#include "cpx_task.h"
#include "cpx_test.h"

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  cpx__shared_lua_register(L);
  lua_getfield(L, -1, "shared");
  lua_setglobal(L, "shared");
  lua_pop(L, 1);
  return L;
}

/* Runs chunk and returns its first result as a string ("" when none). */
static const char *run(lua_State *L, const char *chunk) {
  static char out[512];
  lua_settop(L, 0);
  if (luaL_dostring(L, chunk) != 0) {
    snprintf(out, sizeof(out), "error: %s", lua_tostring(L, -1));
    return out;
  }
  snprintf(out, sizeof(out), "%s",
           lua_gettop(L) && lua_isstring(L, 1) ? lua_tostring(L, 1) : "");
  return out;
}

static void test_basic(void) {
  lua_State *a = new_state(), *b = new_state();
  CPX_CHECK_STR(run(a, "return tostring(shared.set('refresh:x', 'one'))"),
                "true");
  CPX_CHECK_STR(run(b, "return shared.get('refresh:x')"), "one");
  run(b, "shared.set('refresh:x', 'two') shared.set('refresh:a', 'z') "
         "shared.set('other', 'o')");
  CPX_CHECK_STR(run(a, "return shared.get('refresh:x')"), "two");
  CPX_CHECK_STR(run(a, "return table.concat(shared.keys('refresh:'), ',')"),
                "refresh:a,refresh:x");
  run(a, "shared.set('refresh:x', nil)");
  CPX_CHECK_STR(run(b, "return tostring(shared.get('refresh:x'))"), "nil");
  CPX_CHECK_STR(run(b, "return shared.get('other')"), "o");
  /* bounds: a value over 64 KiB is refused, a bad key is misuse */
  CPX_CHECK_STR(run(a,
                    "local ok, err = shared.set('big', string.rep('x', 65537)) "
                    "return tostring(ok) .. ':' .. err"),
                "nil:value too large (64 KiB at most)");
  CPX_CHECK(strstr(run(a, "shared.set('', 'v')"), "error:") != NULL);
  CPX_CHECK(strstr(run(a, "shared.set(string.rep('k', 300), 'v')"), "error:") !=
            NULL);
  run(a, "shared.set('refresh:a', nil) shared.set('other', nil)");
  lua_close(a);
  lua_close(b);
}

static void writer(void *arg) {
  lua_State *L = new_state();
  const char *who = arg;
  char chunk[256];
  snprintf(chunk, sizeof(chunk),
           "for i = 1, 2000 do shared.set('t:%s', tostring(i)) "
           "assert(shared.get('t:%s') ~= nil) end",
           who, who);
  CPX_CHECK_STR(run(L, chunk), "");
  lua_close(L);
}

static void test_threads(void) {
  uv_thread_t t1, t2;
  lua_State *L;
  uv_thread_create(&t1, writer, "a");
  uv_thread_create(&t2, writer, "b");
  uv_thread_join(&t1);
  uv_thread_join(&t2);
  L = new_state();
  CPX_CHECK_STR(run(L, "return shared.get('t:a') .. ',' .. shared.get('t:b')"),
                "2000,2000");
  lua_close(L);
}

int main(void) {
  CPX_TEST_RUN(test_basic);
  CPX_TEST_RUN(test_threads);
  CPX_TEST_DONE();
}
