/* test_panel.c: cpx.panel, the control panel's file reader: which names it
 * accepts, and what it reads (in place here: a plain lua_State has no
 * request, so cpx_lua_await runs the read synchronously). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "cpx_bindings.h"
#include "cpx_lua.h"
#include "cpx_test.h"

static void test_names(void) {
  const char *good[] = {"management.html", "panel.css", "js/app.js",
                        "a/b/c-d_e.1.svg", NULL};
  const char *bad[] = {"",           "/etc/passwd", "../lua/rt/boot.lua",
                       "js/../x.js", "js//app.js",  ".hidden",
                       "js/.x",      "js/",         "a b.js",
                       "a%2e.js",    "a\\b.js",     NULL};
  for (int i = 0; good[i]; i++)
    CPX_CHECK(cpx_panel_name_ok(good[i]));
  for (int i = 0; bad[i]; i++) {
    if (cpx_panel_name_ok(bad[i]))
      fprintf(stderr, "  accepted %s\n", bad[i]);
    CPX_CHECK(!cpx_panel_name_ok(bad[i]));
  }
}

/* Calls cpx.panel.read(name); leaves its two results on the stack. */
static void read_name(lua_State *L, const char *name) {
  lua_getglobal(L, "panel");
  lua_getfield(L, -1, "read");
  lua_remove(L, -2);
  lua_pushstring(L, name);
  lua_call(L, 1, 2);
}

static void test_read(void) {
  char dir[] = "/tmp/cpx-panel-XXXXXX", p[512], outside[512];
  lua_State *L = luaL_newstate();
  FILE *f;

  CPX_CHECK(mkdtemp(dir) != NULL);
  snprintf(p, sizeof(p), "%s/js", dir);
  mkdir(p, 0700);
  snprintf(p, sizeof(p), "%s/js/app.js", dir);
  f = fopen(p, "w");
  fputs("export const x = 1;\n", f);
  fclose(f);
  snprintf(outside, sizeof(outside), "%s-secret", dir);
  f = fopen(outside, "w");
  fputs("secret", f);
  fclose(f);
  snprintf(p, sizeof(p), "%s/link.js", dir);
  CPX_CHECK_INT(symlink(outside, p), 0);
  setenv("CPX_PANEL_DIR", dir, 1);

  lua_newtable(L);
  cpx_panel_lua_register(L);
  lua_getfield(L, -1, "panel");
  lua_setglobal(L, "panel");
  lua_pop(L, 1);

  read_name(L, "js/app.js");
  CPX_CHECK(lua_isstring(L, -2));
  if (lua_isstring(L, -2))
    CPX_CHECK(strcmp(lua_tostring(L, -2), "export const x = 1;\n") == 0);
  CPX_CHECK(lua_isnumber(L, -1) && lua_tonumber(L, -1) > 0);
  lua_pop(L, 2);

  const char *refused[] = {"missing.js", "link.js", "../x", "js", NULL};
  for (int i = 0; refused[i]; i++) {
    read_name(L, refused[i]);
    CPX_CHECK(lua_isnil(L, -2));
    CPX_CHECK(lua_isstring(L, -1) &&
              strcmp(lua_tostring(L, -1), "not found") == 0);
    lua_pop(L, 2);
  }

  lua_close(L);
  unlink(p);
  snprintf(p, sizeof(p), "%s/js/app.js", dir);
  unlink(p);
  snprintf(p, sizeof(p), "%s/js", dir);
  rmdir(p);
  rmdir(dir);
  unlink(outside);
  unsetenv("CPX_PANEL_DIR");
}

int main(void) {
  CPX_TEST_RUN(test_names);
  CPX_TEST_RUN(test_read);
  CPX_TEST_DONE();
}
