/* cpx_lua.c: VM generations, the sandboxed module loader, settings.
 * See cpx_lua.h. */
#include "cpx_lane.h"
#include "cpx_lane_lua.h"
#include "cpx_lua.h"
#include "cpx_worker.h"
#include "cpx_usage.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>

#include "cpx_log.h"
#include "cpx_bindings.h"
#include "cpx_lua_util.h"
#include "cpx_pool.h"
#include "cpx_redirect.h"
#include "cpx_task.h"
#include "cpx_yaml_lua.h"

#define REG_PATHS "cpx.paths"
/* The sandbox's module cache. Not _LOADED: that one holds io, os, debug,
 * package and jit, which require() would otherwise hand to any script. */
#define REG_MODULES "cpx.modules"
#define REG_ENV "cpx.env"
#define MAX_MODULE_BYTES (8u * 1024 * 1024)

/* ---- memory cap ---------------------------------------------------------- */

/* The cap itself is cpx_memcap.c (its rules are what keeps a full VM from
 * crashing the process); here is what a generation does at its safe
 * points. */

static double mib(size_t n) {
  return (double)n / (1024.0 * 1024.0);
}

static void vm_safepoint(cpx_vm_t *vm) {
  cpx_memcap_t *c = &vm->cap;
  int wid = vm->worker ? vm->worker->id : 0;
  int ev;

  vm->host++;
  ev = cpx_memcap_safepoint(c, vm->L);
  if (ev & CPX_MEMCAP_JIT_OFF)
    cpx_log_warn(NULL,
                 "Lua generation %u (worker %d) holds %.1f of its %.0f MiB "
                 "(lua.memory-limit-mb): JIT compiler off for it until it "
                 "holds under half",
                 vm->gen, wid, mib(c->used), mib(c->limit));
  if (ev & CPX_MEMCAP_JIT_ON)
    cpx_log_info(NULL,
                 "Lua generation %u (worker %d) holds %.1f MiB again: JIT "
                 "compiler on",
                 vm->gen, wid, mib(c->used));
  if (ev & CPX_MEMCAP_REFUSED) {
    /* What the failed requests held is garbage now, and the collector
     * paces itself by allocations, which are refused: collect before
     * judging whether the generation stays full. When the last full
     * collection left it full anyway (scripts keep the data), at most one
     * every 250 ms and a step in between: a full collection walks up to
     * the whole cap, and one per failed request would take the worker. */
    uint64_t now = vm->worker ? uv_now(vm->worker->loop) : 0;
    int collected = 0;
    if (!vm->last_full_gc || !vm->worker ||
        vm->full_gc_left < c->limit - c->limit / 4 ||
        now - vm->last_full_gc >= 250) {
      lua_gc(vm->L, LUA_GCCOLLECT, 0);
      vm->last_full_gc = now ? now : 1;
      vm->full_gc_left = c->used;
      collected = 1;
    } else {
      lua_gc(vm->L, LUA_GCSTEP, 1024);
    }
    if (!vm->cap_reported) {
      vm->cap_reported = 1;
      cpx_log_error(NULL,
                    "Lua generation %u (worker %d) reached its memory cap "
                    "(lua.memory-limit-mb: %.0f): requests that need more "
                    "fail with a 500. Raise lua.memory-limit-mb, or look for "
                    "a script that keeps data per request (a module-level "
                    "table); it holds %.1f MiB",
                    vm->gen, wid, mib(c->limit), mib(c->used));
    }
    /* A fresh generation helps only when scripts grew this one: one that
     * is nearly full from its boot would be recycled in a loop. */
    if (collected && c->used >= c->limit - c->limit / 4 &&
        c->used > vm->boot_used && c->used - vm->boot_used >= c->limit / 4 &&
        !vm->recycling && vm->settings.lua_memory_recycle && vm->worker &&
        vm->worker->recycle && vm->worker->vm == vm) {
      vm->recycling = 1;
      cpx_log_warn(NULL,
                   "Lua generation %u (worker %d) stays at its memory cap "
                   "(%.1f of %.0f MiB after a full collection): starting a "
                   "fresh generation, as a reload does (what scripts kept "
                   "in it is lost)",
                   vm->gen, wid, mib(c->used), mib(c->limit));
      vm->worker->recycle(vm->worker, vm->gen);
    }
  }
  vm->host--;
}

void cpx_vm_enter(cpx_vm_t *vm) {
  if (vm->depth++ == 0)
    vm_safepoint(vm);
}

void cpx_vm_leave(cpx_vm_t *vm) {
  if (--vm->depth == 0)
    vm_safepoint(vm);
}

static int vm_panic(lua_State *L) {
  cpx_log_error(NULL, "Lua panic: %s", lua_tostring(L, -1));
  abort();
}

/* ---- locating lua/ ------------------------------------------------------ */

static int is_lua_dir(const char *dir) {
  char p[PATH_MAX * 2];
  struct stat st;
  snprintf(p, sizeof(p), "%s/rt/boot.lua", dir);
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int cpx_lua_find_builtin_dir(const char *argv0, char *out, size_t outlen) {
  char exe[PATH_MAX], cand[PATH_MAX + 64];
  const char *env = getenv("CPX_LUA_DIR");
  ssize_t n;

  CPX_UNUSED(argv0);
  if (env && is_lua_dir(env)) {
    snprintf(out, outlen, "%s", env);
    return 0;
  }
  n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *dir = dirname(exe);
    /* build/cliproxy in the source tree, then <prefix>/bin/cliproxy. */
    const char *rel[] = {"/../lua", "/../share/cliproxy/lua", "/lua"};
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
      snprintf(cand, sizeof(cand), "%s%s", dir, rel[i]);
      if (is_lua_dir(cand)) {
        if (!realpath(cand, out))
          snprintf(out, outlen, "%s", cand);
        return 0;
      }
    }
  }
  snprintf(cand, sizeof(cand), "%s/lua", CPX_INSTALL_DATADIR);
  if (is_lua_dir(cand)) {
    snprintf(out, outlen, "%s", cand);
    return 0;
  }
  snprintf(cand, sizeof(cand), "%s/lua", CPX_SOURCE_DIR);
  if (is_lua_dir(cand)) {
    snprintf(out, outlen, "%s", cand);
    return 0;
  }
  return CPX_EINVAL;
}

/* ---- sandbox and loader -------------------------------------------------- */

/* Modules the loader hands out from LuaJIT itself. */
static const char *native_modules[] = {"table.new", "table.clear", NULL};

static int read_file(const char *path, char **out, size_t *outlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  char *buf;
  ssize_t n;

  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (size_t)st.st_size > MAX_MODULE_BYTES) {
    close(fd);
    return CPX_EINVAL;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return CPX_ENOMEM;
  }
  n = read(fd, buf, (size_t)st.st_size);
  close(fd);
  if (n != st.st_size) {
    free(buf);
    return CPX_EIO;
  }
  buf[n] = '\0';
  *out = buf;
  *outlen = (size_t)n;
  return 0;
}

/* Loads a text chunk (never bytecode) and gives it the sandbox env.
 * Stack: pushes the function, or returns non-zero with the message pushed. */
static int load_sandboxed(lua_State *L, const char *path) {
  char *src = NULL;
  size_t len = 0;
  char chunk[PATH_MAX + 2];
  int rc = read_file(path, &src, &len);

  if (rc != 0) {
    lua_pushfstring(L, "%s: cannot read (%s)", path, cpx_strerror(rc));
    return 1;
  }
  if (len > 0 && src[0] == 0x1b) {
    free(src);
    lua_pushfstring(L, "%s: bytecode is not accepted", path);
    return 1;
  }
  snprintf(chunk, sizeof(chunk), "@%s", path);
  rc = luaL_loadbuffer(L, src, len, chunk);
  free(src);
  if (rc != 0)
    return 1;
  lua_getfield(L, LUA_REGISTRYINDEX, REG_ENV);
  lua_setfenv(L, -2);
  return 0;
}

/* require(name): user lua.paths first, then the built-in lua/ directory. A
 * file in a user directory with the same relative name as a built-in one
 * replaces it. */
static int l_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char rel[512], path[PATH_MAX];
  struct stat st;
  int found = 0;

  lua_getfield(L, LUA_REGISTRYINDEX, REG_MODULES);
  lua_getfield(L, -1, name);
  if (lua_isboolean(L, -1) && !lua_toboolean(L, -1))
    return luaL_error(L,
                      "module '%s' requires itself while loading "
                      "(an override must not require its own name)",
                      name);
  if (!lua_isnil(L, -1))
    return 1;
  lua_pop(L, 1);
  /* Mark the module as loading so one that requires itself (an override
   * asking for "the built-in") fails cleanly instead of recursing. */
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, name);
  for (int i = 0; native_modules[i]; i++) {
    if (strcmp(name, native_modules[i]) == 0) {
      lua_getglobal(L, "require");
      lua_pushvalue(L, 1);
      lua_call(L, 1, 1);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, name);
      return 1;
    }
  }
  if (strlen(name) >= sizeof(rel) - 16 || strstr(name, "..") ||
      strchr(name, '/')) {
    lua_pushnil(L);
    lua_setfield(L, -2, name);
    return luaL_error(L, "invalid module name '%s'", name);
  }
  snprintf(rel, sizeof(rel), "%s", name);
  for (char *p = rel; *p; p++)
    if (*p == '.')
      *p = '/';
  lua_getfield(L, LUA_REGISTRYINDEX, REG_PATHS);
  int npaths = (int)lua_objlen(L, -1);
  for (int i = 1; i <= npaths && !found; i++) {
    lua_rawgeti(L, -1, i);
    const char *dir = lua_tostring(L, -1);
    const char *fmt[] = {"%s/%s.lua", "%s/%s/init.lua"};
    for (int k = 0; k < 2 && !found; k++) {
      snprintf(path, sizeof(path), fmt[k], dir, rel);
      if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
        found = 1;
    }
    lua_pop(L, 1);
    /* lib/, translators/, providers/ and middleware/ are meant to be
     * replaced; the engine (rt/) is not an extension point, so replacing
     * it is said once per generation, naming the file. */
    if (found && i < npaths && strncmp(name, "rt.", 3) == 0)
      cpx_log_warn(NULL,
                   "%s replaces the engine module %s: rt/ is cliproxy's "
                   "own code, not an extension point (docs/modules.md)",
                   path, name);
  }
  lua_pop(L, 1);
  if (!found) {
    lua_pushnil(L);
    lua_setfield(L, -2, name);
    return luaL_error(L, "module '%s' not found in lua.paths or lua/", name);
  }
  if (load_sandboxed(L, path) != 0) {
    lua_pushnil(L);
    lua_setfield(L, -3, name);
    return lua_error(L);
  }
  lua_pushstring(L, name);
  {
    /* Run the chunk protected so a failing module is forgotten (a later
     * require retries it) and the error still reaches the caller. */
    int rc = lua_pcall(L, 1, 1, 0);
    if (rc != 0) {
      lua_pushnil(L);
      lua_setfield(L, -3, name);
      return lua_error(L);
    }
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name); /* modules[name] */
  return 1;
}

static int l_print(lua_State *L) {
  luaL_Buffer b;
  int n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, i);
    lua_call(L, 1, 1);
    if (i > 1)
      luaL_addchar(&b, '\t');
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  cpx_log_info(NULL, "[lua] %s", lua_tostring(L, -1));
  return 0;
}

static int l_env_newindex(lua_State *L) {
  return luaL_error(L, "assignment to undeclared global '%s'",
                    lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

/* Builds the environment every module runs in: the safe part of the
 * standard library, our require, and no ffi/debug/io/os.execute/load. */
static void build_sandbox(lua_State *L) {
  static const char *globals[] = {
      "assert",       "error",        "ipairs",   "next",     "pairs",
      "pcall",        "rawequal",     "rawget",   "rawset",   "select",
      "setmetatable", "getmetatable", "tonumber", "tostring", "type",
      "unpack",       "xpcall",       "string",   "table",    "math",
      "bit",          "coroutine",    NULL};

  /* string.dump would hand out bytecode; strings share this table. */
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);

  lua_newtable(L); /* env */
  for (int i = 0; globals[i]; i++) {
    lua_getglobal(L, globals[i]);
    lua_setfield(L, -2, globals[i]);
  }
  lua_newtable(L); /* os subset */
  lua_getglobal(L, "os");
  const char *os_ok[] = {"time", "clock", "date", "difftime", NULL};
  for (int i = 0; os_ok[i]; i++) {
    lua_getfield(L, -1, os_ok[i]);
    lua_setfield(L, -3, os_ok[i]);
  }
  lua_pop(L, 1);
  lua_setfield(L, -2, "os");
  lua_pushcfunction(L, l_require);
  lua_setfield(L, -2, "require");
  lua_pushcfunction(L, l_print);
  lua_setfield(L, -2, "print");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "_G");
  lua_newtable(L); /* metatable: stray globals are errors */
  lua_pushcfunction(L, l_env_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_ENV);
}

/* ---- settings ------------------------------------------------------------ */

/* Walks "a.b.c" from the table at idx; pushes the value (or nil). */
static void get_path(lua_State *L, int idx, const char *path) {
  char key[128];
  const char *p = path;
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  lua_pushvalue(L, idx);
  while (*p) {
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n >= sizeof(key))
      n = sizeof(key) - 1;
    memcpy(key, p, n);
    key[n] = '\0';
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    }
    lua_getfield(L, -1, key);
    lua_remove(L, -2);
    p = dot ? dot + 1 : p + n;
  }
}

static double num_at(lua_State *L, int idx, const char *path, double dflt) {
  double v;
  get_path(L, idx, path);
  v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static void str_at(lua_State *L, int idx, const char *path, char *out,
                   size_t outlen, const char *dflt) {
  get_path(L, idx, path);
  snprintf(out, outlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : dflt);
  lua_pop(L, 1);
}

static int bool_at(lua_State *L, int idx, const char *path) {
  int v;
  get_path(L, idx, path);
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static void read_settings(lua_State *L, int idx, cpx_settings_t *s) {
  cpx_server_config_t *sc = &s->server;
  memset(s, 0, sizeof(*s));
  cpx_server_config_defaults(sc);
  str_at(L, idx, "host", sc->host, sizeof(sc->host), "");
  sc->port = (int)num_at(L, idx, "port", 8317);
  sc->http.max_header_bytes =
      (size_t)num_at(L, idx, "limits.max-header-bytes", 65536);
  sc->http.max_fields = (size_t)num_at(L, idx, "limits.max-header-fields", 100);
  sc->http.max_body =
      (size_t)num_at(L, idx, "limits.max-body-bytes", 32.0 * 1024 * 1024);
  sc->header_timeout_ms =
      (uint64_t)(num_at(L, idx, "limits.header-timeout-seconds", 10) * 1000);
  sc->body_timeout_ms =
      (uint64_t)(num_at(L, idx, "limits.body-timeout-seconds", 60) * 1000);
  sc->keepalive_timeout_ms =
      (uint64_t)(num_at(L, idx, "limits.keepalive-timeout-seconds", 60) * 1000);
  sc->write_stall_ms =
      (uint64_t)(num_at(L, idx, "limits.write-stall-timeout-seconds", 300) *
                 1000);
  sc->drain_timeout_ms =
      (uint64_t)(num_at(L, idx, "limits.drain-timeout-seconds", 30) * 1000);
  sc->write_high_water =
      (size_t)num_at(L, idx, "limits.write-buffer-high-bytes", 262144);
  sc->write_low_water =
      (size_t)num_at(L, idx, "limits.write-buffer-low-bytes", 65536);
  sc->lingering_time_ms =
      (uint64_t)(num_at(L, idx, "limits.lingering-time-seconds", 30) * 1000);
  sc->lingering_timeout_ms =
      (uint64_t)(num_at(L, idx, "limits.lingering-timeout-seconds", 5) * 1000);
  sc->lingering_max_bytes =
      (size_t)num_at(L, idx, "limits.lingering-max-bytes", 64.0 * 1024 * 1024);
  sc->max_connections = (size_t)num_at(L, idx, "limits.max-connections", 10000);
  sc->max_connections_per_ip =
      (size_t)num_at(L, idx, "limits.max-connections-per-ip", 0);
  s->tls_enable = bool_at(L, idx, "tls.enable");
  str_at(L, idx, "tls.cert", s->tls_cert, sizeof(s->tls_cert), "");
  str_at(L, idx, "tls.key", s->tls_key, sizeof(s->tls_key), "");
  s->debug = bool_at(L, idx, "debug");
  s->logging_to_file = bool_at(L, idx, "logging-to-file");
  s->logs_max_total_mb = (size_t)num_at(L, idx, "logs-max-total-size-mb", 0.0);
  str_at(L, idx, "proxy-url", s->proxy_url, sizeof(s->proxy_url), "");
  str_at(L, idx, "upstream-ca-file", s->upstream_ca_file,
         sizeof(s->upstream_ca_file), "");
  s->workers = (int)num_at(L, idx, "workers", 1);
  s->lua_memory_limit =
      (size_t)(num_at(L, idx, "lua.memory-limit-mb", 256) * 1024 * 1024);
  get_path(L, idx, "lua.memory-recycle");
  s->lua_memory_recycle = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  s->max_timers = (int)num_at(L, idx, "lua.max-timers", 1024);
  s->upstream_connect_ms =
      (uint64_t)(num_at(L, idx, "limits.upstream-connect-timeout-seconds", 10) *
                 1000);
  s->upstream_first_byte_ms =
      (uint64_t)(num_at(L, idx, "limits.upstream-first-byte-timeout-seconds",
                        300) *
                 1000);
  s->upstream_idle_ms =
      (uint64_t)(num_at(L, idx, "limits.upstream-idle-timeout-seconds", 300) *
                 1000);
  s->upstream_max_body = (size_t)num_at(
      L, idx, "limits.upstream-max-body-bytes", 64.0 * 1024 * 1024);
}

/* ---- generations --------------------------------------------------------- */

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object)", 1);
  return 1;
}

/* Sets registry[REG_PATHS] = { user dirs..., builtin }. User dirs come from
 * lua.paths in the YAML document at doc_idx, relative to the config file. */
static void set_paths(lua_State *L, int doc_idx, const char *config_path,
                      const char *builtin) {
  char cfgdir[PATH_MAX], full[PATH_MAX * 2];
  int n = 0;

  char tmp[PATH_MAX];
  snprintf(tmp, sizeof(tmp), "%s", config_path);
  /* dirname may modify its argument and return a pointer into it. */
  snprintf(cfgdir, sizeof(cfgdir), "%s", dirname(tmp));
  lua_newtable(L);
  get_path(L, doc_idx, "lua.paths");
  if (lua_istable(L, -1)) {
    int len = (int)lua_objlen(L, -1);
    for (int i = 1; i <= len; i++) {
      lua_rawgeti(L, -1, i);
      const char *d = lua_tostring(L, -1);
      if (d && *d) {
        if (d[0] == '/')
          snprintf(full, sizeof(full), "%s", d);
        else if (d[0] == '~' && getenv("HOME"))
          snprintf(full, sizeof(full), "%s%s", getenv("HOME"), d + 1);
        else
          snprintf(full, sizeof(full), "%s/%s", cfgdir, d);
        lua_pushstring(L, full);
        lua_rawseti(L, -4, ++n);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushstring(L, builtin);
  lua_rawseti(L, -2, ++n);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_PATHS);
}

/* Closes the state with LuaJIT's own allocator back in place: lua_close
 * destroys its allocator arena (every segment of the VM) only when the
 * state's allocf is still lj_alloc_f. With the cap's allocator in place, the
 * arena stayed mapped: about 1 MiB per reload generation (bench/soak). */
static void vm_close(cpx_vm_t *vm, lua_State *L) {
  cpx_memcap_detach(&vm->cap, L);
  lua_close(L);
}

int cpx_vm_new(cpx_worker_t *w, const char *config_path, cpx_vm_t **out,
               char *err, size_t errlen) {
  cpx_vm_t *vm = calloc(1, sizeof(*vm));
  lua_State *L;
  int rc, top;

  if (!vm)
    return CPX_ENOMEM;
  vm->worker = w;
  vm->refs = 1;
  vm->gen = ++w->next_gen;
  vm->handle_ref = vm->app_ref = LUA_NOREF;
  L = luaL_newstate();
  if (!L) {
    free(vm);
    snprintf(err, errlen, "cannot create a Lua state");
    return CPX_ENOMEM;
  }
  /* Counted from here on; the limit is set once the config is read. */
  cpx_memcap_attach(&vm->cap, L, 0, &vm->host);
  vm->L = L;
  lua_atpanic(L, vm_panic);
  luaL_openlibs(L);
  /* LuaJIT's JIT stays on: hooks cannot interrupt compiled loops anyway
   * (documented: a script in an endless loop holds its worker). */

  /* cpx = util part + server part; reachable as require("cpx"). */
  cpx_lua_util_open(L);
  cpx_json_scan_lua_register(L);
  cpx_access_lua_register(L);
  cpx_http_lua_register(L);
  cpx_tokens_lua_register(L);
  cpx__lua_api_register(L);
  cpx_pool_lua_register(L);
  cpx_store_lua_register(L);
  cpx_store_async_lua_register(L);
  cpx_lane_lua_register(L);
  cpx_yaml_lua_register(L);
  cpx_mgmt_lua_register(L);
  cpx_usage_lua_register(L);
  cpx_panel_lua_register(L);
  cpx_reqlog_lua_register(L);
  cpx_metrics_lua_register(L);
  cpx_otlp_lua_register(L);
  cpx_redirect_lua_register(L);
  cpx_sign_lua_register(L);
  lua_pushlightuserdata(L, w);
  lua_setfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  lua_pushlightuserdata(L, vm);
  lua_setfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  lua_newtable(L); /* the sandbox's module cache */
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "cpx");
  lua_setfield(L, LUA_REGISTRYINDEX, REG_MODULES);
  lua_pop(L, 1);
  build_sandbox(L);

  top = lua_gettop(L);
  rc = cpx_yaml_load_file(L, config_path, err, errlen);
  if (rc != 0)
    goto fail;
  /* stack: doc, lines */
  set_paths(L, top + 1, config_path, w->lua_dir);

  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, l_require);
  lua_pushliteral(L, "rt.boot");
  if (lua_pcall(L, 1, 1, top + 3) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    rc = CPX_ESCRIPT;
    goto fail;
  }
  lua_getfield(L, -1, "start");
  lua_pushvalue(L, top + 1);
  lua_pushvalue(L, top + 2);
  lua_pushstring(L, config_path);
  if (lua_pcall(L, 3, 2, top + 3) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    rc = CPX_ESCRIPT;
    goto fail;
  }
  if (lua_isnil(L, -2)) {
    snprintf(err, errlen, "%s",
             lua_tostring(L, -1) ? lua_tostring(L, -1) : "invalid config");
    rc = CPX_EINVAL;
    goto fail;
  }
  lua_pop(L, 1);
  /* stack: doc lines tb boot app; app = {config=, handle=, shutdown=} */
  lua_getfield(L, -1, "config");
  read_settings(L, -1, &vm->settings);
  lua_pop(L, 1);
  lua_getfield(L, -1, "handle");
  if (!lua_isfunction(L, -1)) {
    snprintf(err, errlen, "rt.boot.start returned no handle function");
    rc = CPX_ESCRIPT;
    goto fail;
  }
  vm->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  vm->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, top);
  vm->cap.limit = vm->settings.lua_memory_limit;
  if (vm->cap.limit && vm->cap.used > vm->cap.limit)
    vm->cap.limit = vm->cap.used * 2;
  lua_gc(L, LUA_GCCOLLECT, 0);
  vm->boot_used = vm->cap.used;
  *out = vm;
  return 0;

fail:
  vm_close(vm, L);
  cpx_lane_free(vm->lane);
  free(vm);
  return rc;
}

/* Calls app[name](arg) under traceback; leaves the result at the top (or
 * an error message) and returns 0 or -1. The caller resets the stack. */
static int app_call(cpx_vm_t *vm, const char *name, const char *arg) {
  lua_State *L = vm->L;
  int base = lua_gettop(L), rc;
  vm->host++;
  lua_pushcfunction(L, traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->app_ref);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  if (arg)
    lua_pushstring(L, arg);
  vm->host--;
  if (!lua_isfunction(L, arg ? -2 : -1)) {
    lua_pushfstring(L, "rt.boot.start returned no %s function", name);
    return -1;
  }
  cpx_vm_enter(vm);
  rc = lua_pcall(L, arg ? 1 : 0, 1, base + 1);
  cpx_vm_leave(vm);
  return rc == 0 ? 0 : -1;
}

void cpx_vm_init_worker(cpx_vm_t *vm) {
  lua_State *L = vm->L;
  int top = lua_gettop(L);
  if (vm->live)
    return;
  cpx__tasks_live(vm);
  if (app_call(vm, "init_worker", NULL) != 0)
    cpx_log_error(NULL, "init_worker (worker %d, generation %u): %s",
                  vm->worker ? vm->worker->id : 0, vm->gen,
                  lua_tostring(L, -1));
  lua_settop(L, top);
}

void cpx_vm_retire(cpx_vm_t *vm, const char *reason) {
  cpx__tasks_retire(vm, reason);
}

void cpx_vm_banner(cpx_vm_t *vm, const char *base_url) {
  lua_State *L = vm->L;
  int top = lua_gettop(L);
  if (app_call(vm, "banner", base_url) != 0) {
    cpx_log_warn(NULL, "rt.banner: %s", lua_tostring(L, -1));
  } else if (lua_istable(L, -1)) {
    for (int i = 1;; i++) {
      lua_rawgeti(L, -1, i);
      if (!lua_isstring(L, -1))
        break;
      cpx_log_info(NULL, "%s", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

/* Copies t[i] (a string, else "") into out. */
static void str_index(lua_State *L, int t, int i, char *out, size_t n) {
  lua_rawgeti(L, t, i);
  snprintf(out, n, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
}

static void str_field(lua_State *L, int t, const char *k, char *out, size_t n) {
  lua_getfield(L, t, k);
  snprintf(out, n, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
}

int cpx_vm_doctor(cpx_vm_t *vm, cpx_doctor_t *out, char *err, size_t errlen) {
  lua_State *L = vm->L;
  int top = lua_gettop(L), rep, n, rc = 0;

  memset(out, 0, sizeof(*out));
  if (app_call(vm, "doctor", NULL) != 0 || !lua_istable(L, -1)) {
    snprintf(err, errlen, "rt.doctor: %s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "no report");
    lua_settop(L, top);
    return CPX_ESCRIPT;
  }
  rep = lua_gettop(L);
  lua_getfield(L, rep, "checks");
  n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  out->checks = n ? calloc((size_t)n, sizeof(*out->checks)) : NULL;
  if (n && !out->checks)
    rc = CPX_ENOMEM;
  for (int i = 0; !rc && i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    if (lua_istable(L, -1)) {
      int t = lua_gettop(L);
      cpx_doctor_check_t *c = &out->checks[out->nchecks++];
      str_index(L, t, 1, c->level, sizeof(c->level));
      str_index(L, t, 2, c->text, sizeof(c->text));
      str_index(L, t, 3, c->hint, sizeof(c->hint));
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, rep, "upstreams");
  n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  out->upstreams = n ? calloc((size_t)n, sizeof(*out->upstreams)) : NULL;
  if (!rc && n && !out->upstreams)
    rc = CPX_ENOMEM;
  for (int i = 0; !rc && i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    if (lua_istable(L, -1)) {
      int t = lua_gettop(L);
      cpx_doctor_upstream_t *u = &out->upstreams[out->nupstreams++];
      str_field(L, t, "name", u->name, sizeof(u->name));
      str_field(L, t, "url", u->url, sizeof(u->url));
      str_field(L, t, "proxy", u->proxy, sizeof(u->proxy));
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  if (rc) {
    snprintf(err, errlen, "out of memory");
    cpx_doctor_free(out);
  }
  return rc;
}

void cpx_doctor_free(cpx_doctor_t *d) {
  free(d->checks);
  free(d->upstreams);
  memset(d, 0, sizeof(*d));
}

void cpx_vm_ref(cpx_vm_t *vm) {
  vm->refs++;
}

void cpx_vm_unref(cpx_vm_t *vm) {
  if (--vm->refs > 0)
    return;
  cpx_log_debug(NULL, "closing Lua generation %u", vm->gen);
  vm_close(vm, vm->L);
  cpx_lane_free(vm->lane);
  free(vm);
}
