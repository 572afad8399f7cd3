/* fuzz_lua: targets whose logic is Lua (the JSON codec bindings, the
 * translators, the config validator, the credential loader, the error-body
 * parsers). FUZZ_DRIVER names a file in spec/fuzz/ that returns
 * function(input...); any Lua error it raises is a finding, and so is a run
 * longer than the instruction budget (a loop). The JIT is off so the count
 * hook sees every instruction.
 *
 * With FUZZ_YAML the input is first loaded by the YAML loader
 * (runtime/lua/cpx_yaml_lua.c) and the driver gets (doc, lines); a load error
 * must come with a message. */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "cpx_yaml_lua.h"
#include "fuzz.h"

int luaopen_cpx(lua_State *L);

static lua_State *L;
static int fn_ref;
static long budget;

#define BUDGET 20000000L /* VM instructions per input */
#define HOOK_EVERY 1000

static void on_count(lua_State *l, lua_Debug *ar) {
  (void)ar;
  budget -= HOOK_EVERY;
  if (budget < 0)
    luaL_error(l, "instruction budget exhausted (a loop?)");
}

static int traceback(lua_State *l) {
  luaL_traceback(l, l, lua_tostring(l, 1), 1);
  return 1;
}

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_cpx);
  lua_setfield(L, -2, "cpx");
  lua_pop(L, 1);
  lua_pushstring(L,
                 CPX_SOURCE_DIR "/lua/?.lua;" CPX_SOURCE_DIR "/lua/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  /* the YAML loader looks the array metatable up in the registry */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cpx");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    fprintf(stderr, "fuzz: require cpx: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getfield(L, -1, "json");
  lua_getfield(L, -1, "array_mt");
  lua_setfield(L, LUA_REGISTRYINDEX, "cpx.json.array_mt");
  lua_pop(L, 2);
  if (luaL_loadfile(L, CPX_SOURCE_DIR "/spec/fuzz/" FUZZ_DRIVER ".lua") != 0 ||
      lua_pcall(L, 0, 1, 0) != 0 || !lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz: driver %s: %s\n", FUZZ_DRIVER,
            lua_isstring(L, -1) ? lua_tostring(L, -1)
                                : "must return a function");
    abort();
  }
  fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, on_count, LUA_MASKCOUNT, HOOK_EVERY);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  int nargs = 1, base;
  if (!L)
    setup();
  base = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
#ifdef FUZZ_YAML
  {
    char err[256] = "";
    int rc = cpx_yaml_load_string(L, "fuzz.yaml", (const char *)data, size, err,
                                  sizeof(err));
    if (rc != 0) {
      FUZZ_CHECK(err[0] != '\0', "YAML load failed (%d) without a message", rc);
      lua_settop(L, base);
      return 0;
    }
    nargs = 2;
  }
#else
  lua_pushlstring(L, (const char *)data, size);
#endif
  budget = BUDGET;
  if (lua_pcall(L, nargs, 0, base + 1) != 0) {
    const char *msg = lua_tostring(L, -1);
    FUZZ_CHECK(0, "driver %s raised: %s", FUZZ_DRIVER, msg ? msg : "?");
  }
  lua_settop(L, base);
  if (++runs % 256 == 0)
    lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
