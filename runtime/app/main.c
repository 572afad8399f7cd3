/* main.c: flags and subcommands, signals (HUP reload, TERM drain), config
 * hot reload, and the worker loop. */
#include <getopt.h>
#include <limits.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libgen.h>

#include "cpx.h"
#include "cpx_doctor.h"
#include "cpx_log.h"
#include "cpx_login.h"
#include "cpx_lua.h"
#include "cpx_worker.h"
#include "cpx_pool.h"
#include "cpx_redirect.h"
#include "cpx_store.h"
#include "cpx_tls.h"
#include "cpx_tokens.h"
#include "cpx_otlp.h"
#include "cpx_usage.h"

#include <curl/curl.h>

#include <lua.h>

#define MAX_SCRIPT_WATCHES 128
#define MAX_WORKERS 64

enum { CMD_RELOAD = 1, CMD_DRAIN = 2, CMD_RECYCLE = 4 };

struct app_s;

/* One loop thread. Worker 0 runs on the main thread and also owns the
 * signals, the file watches and the log flush timer; the others get their
 * commands through an async handle. */
typedef struct {
  cpx_worker_t w; /* first: the server's data pointer leads to both */
  struct app_s *app;
  uv_loop_t loop;
  uv_async_t async;
  atomic_uint cmds;
  unsigned recycle_gen; /* the generation CMD_RECYCLE replaces */
  int draining;         /* CMD_DRAIN seen (workers other than 0) */
  uv_thread_t tid;
  int started;
  int drained;
} worker_t;

typedef struct app_s {
  worker_t workers[MAX_WORKERS];
  int nworkers;
  cpx_tls_ctx_t *tls;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_fs_event_t watch;
  uv_timer_t debounce;
  uv_timer_t script_debounce;
  uv_timer_t log_flush;
  uv_timer_t pool_save; /* cooldowns to auth-dir when they changed */
  uint64_t pool_saved;  /* cpx_pool_changes at the last save */
  int pool_save_failed; /* warned once */
  /* One handle per script directory (inotify is not recursive). Each is
   * heap-allocated and freed in its close callback. */
  uv_fs_event_t *script_watch[MAX_SCRIPT_WATCHES];
  int nscript_watch;
  int watching;
  int exit_code;
  int stopping;
  struct stat cfg_st;
} app_t;

static void watch_scripts(app_t *app);

static void usage(FILE *out) {
  fprintf(out,
          "cliproxy %s - a Lua-scriptable AI API proxy\n"
          "\n"
          "Usage:\n"
          "  cliproxy [-config FILE]            run the proxy (default: "
          "config.yaml)\n"
          "  cliproxy check [-config FILE]      load the config and every Lua "
          "module as the\n"
          "                                     server would; exit 0 when all "
          "is well\n"
          "  cliproxy doctor [-config FILE] [--offline]\n"
          "                                     check the config, the port, "
          "each credential and\n"
          "                                     each upstream; say what to "
          "fix (exit 1 on a problem)\n"
          "  cliproxy login claude|codex|gemini|antigravity|qwen|iflow\n"
          "                [--device] [--cookie] [--project-id ID|all] "
          "[--no-browser]\n"
          "                [--callback-port N] [--timeout SECONDS] "
          "[-config FILE]\n"
          "                                     log in to a subscription "
          "account and save the\n"
          "                                     credential in auth-dir "
          "(also as CLIProxyAPI's\n"
          "                                     -claude-login, "
          "-codex-login, -codex-device-login,\n"
          "                                     -login, -antigravity-login, "
          "-qwen-login, -iflow-login,\n"
          "                                     -iflow-cookie, -project_id, "
          "-no-browser,\n"
          "                                     -oauth-callback-port N)\n"
          "  cliproxy tokens --encoding ENC [FILE]\n"
          "                                     count tokens (o200k_base, "
          "cl100k_base) of FILE\n"
          "                                     or standard input\n"
          "  cliproxy --help | --version\n"
          "\n"
          "Flags:\n"
          "  -config, --config FILE   configuration file (CLIProxyAPI's "
          "config.yaml keys)\n"
          "\n"
          "Signals: SIGHUP reloads the config and scripts; SIGTERM/SIGINT "
          "drain and exit.\n"
          "Environment: CPX_LUA_DIR overrides the built-in lua/ directory.\n",
          CPX_VERSION);
}

/* Accepts -config FILE, --config FILE, -config=FILE, --config=FILE. */
static int parse_config_flag(int argc, char **argv, int start,
                             const char **path) {
  for (int i = start; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-config") == 0 || strcmp(a, "--config") == 0 ||
        strcmp(a, "-c") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "cliproxy: %s needs a file\n", a);
        return -1;
      }
      *path = argv[++i];
    } else if (strncmp(a, "-config=", 8) == 0) {
      *path = a + 8;
    } else if (strncmp(a, "--config=", 9) == 0) {
      *path = a + 9;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 ||
               strcmp(a, "-help") == 0) {
      usage(stdout);
      exit(0);
    } else {
      fprintf(stderr, "cliproxy: unknown argument '%s' (see --help)\n", a);
      return -1;
    }
  }
  return 0;
}

static int resolve_config(const char *path, char *out, size_t outlen) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr,
            "cliproxy: config file '%s' not found (copy config.example.yaml "
            "to config.yaml, or pass -config FILE)\n",
            path);
    return -1;
  }
  if (!realpath(path, out))
    snprintf(out, outlen, "%s", path);
  return 0;
}

/* The set-up `check` and `doctor` share: -config, the file, lua/. Returns 0,
 * or the exit code (2: bad flags, 1: no such file or no lua/). */
static int cli_worker(int argc, char **argv, const char *argv0,
                      cpx_worker_t *w) {
  const char *path = "config.yaml";

  if (parse_config_flag(argc, argv, 2, &path) != 0)
    return 2;
  memset(w, 0, sizeof(*w));
  if (resolve_config(path, w->config_path, sizeof(w->config_path)) != 0)
    return 1;
  if (cpx_lua_find_builtin_dir(argv0, w->lua_dir, sizeof(w->lua_dir)) != 0) {
    fprintf(stderr, "cliproxy: cannot find the built-in lua/ directory\n");
    return 1;
  }
  return 0;
}

static int cmd_check(int argc, char **argv, const char *argv0) {
  cpx_worker_t w;
  cpx_vm_t *vm;
  char err[4096];
  int rc;

  if ((rc = cli_worker(argc, argv, argv0, &w)) != 0)
    return rc;
  rc = cpx_vm_new(&w, w.config_path, &vm, err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  if (vm->settings.tls_enable) {
    cpx_tls_ctx_t *tls;
    if (cpx_tls_ctx_new(&tls, vm->settings.tls_cert, vm->settings.tls_key, err,
                        sizeof(err)) != 0) {
      fprintf(stderr, "%s: %s\n", w.config_path, err);
      cpx_vm_unref(vm);
      return 1;
    }
    cpx_tls_ctx_free(tls);
  }
  if (vm->settings.upstream_ca_file[0]) {
    cpx_tls_ctx_t *tls;
    if (cpx_tls_client_ctx_new(&tls, vm->settings.upstream_ca_file, err,
                               sizeof(err)) != 0) {
      fprintf(stderr, "%s: upstream-ca-file: %s\n", w.config_path, err);
      cpx_vm_unref(vm);
      return 1;
    }
    cpx_tls_ctx_free(tls);
  }
  printf("%s: ok (lua: %s)\n", w.config_path, w.lua_dir);
  cpx_vm_unref(vm);
  return 0;
}

static int cmd_doctor(int argc, char **argv, const char *argv0) {
  cpx_doctor_opts_t opts = {0, 0};
  cpx_worker_t w;
  cpx_vm_t *vm;
  char err[4096];
  char *rest[64];
  int nrest = 0, problems;

  /* doctor's own flags first; the rest is -config as everywhere. */
  for (int i = 0; i < argc && nrest < 64; i++) {
    if (i >= 2 &&
        (strcmp(argv[i], "--offline") == 0 || strcmp(argv[i], "-offline") == 0))
      opts.offline = 1;
    else
      rest[nrest++] = argv[i];
  }
  if ((problems = cli_worker(nrest, rest, argv0, &w)) != 0)
    return problems;
  if (cpx_vm_new(&w, w.config_path, &vm, err, sizeof(err)) != 0) {
    printf("cliproxy doctor: %s\n  error %s\n        -> fix the file and line "
           "named above, then run doctor again\n1 problem(s), 0 warning(s)\n",
           w.config_path, err);
    return 1;
  }
  problems = cpx_doctor_run(vm, w.config_path, &opts);
  cpx_vm_unref(vm);
  return problems ? 1 : 0;
}

/* `cliproxy login PROVIDER [flags]`, and CLIProxyAPI's spelling of the same
 * as top-level flags (`-claude-login`, `-codex-device-login`, ...). Every
 * flag takes one or two dashes and "=VALUE" or a separate value. */
static int is_flag(const char *a, const char *name) {
  if (a[0] != '-')
    return 0;
  a += a[1] == '-' ? 2 : 1;
  return strcmp(a, name) == 0;
}

/* The value of flag `name` at argv[*i] ("-name V" or "-name=V"), or NULL
 * when argv[*i] is not that flag. *bad is set when the value is missing. */
static const char *flag_value(int argc, char **argv, int *i, const char *name,
                              int *bad) {
  const char *a = argv[*i];
  size_t n = strlen(name);
  if (a[0] != '-')
    return NULL;
  a += a[1] == '-' ? 2 : 1;
  if (strncmp(a, name, n) != 0)
    return NULL;
  if (a[n] == '=')
    return a + n + 1;
  if (a[n] != 0)
    return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "cliproxy: %s needs a value\n", argv[*i]);
    *bad = 1;
    return NULL;
  }
  return argv[++*i];
}

/* CLIProxyAPI's top-level login flags -> provider (and mode). */
static const struct {
  const char *flag, *provider;
  int device, cookie;
} login_aliases[] = {
    {"claude-login", "claude", 0, 0},
    {"codex-login", "codex", 0, 0},
    {"codex-device-login", "codex", 1, 0},
    {"login", "gemini", 0, 0},
    {"antigravity-login", "antigravity", 0, 0},
    {"qwen-login", "qwen", 0, 0},
    {"iflow-login", "iflow", 0, 0},
    {"iflow-cookie", "iflow", 0, 1},
};

static int login_alias(const char *a) {
  for (size_t i = 0; i < sizeof(login_aliases) / sizeof(login_aliases[0]); i++)
    if (is_flag(a, login_aliases[i].flag))
      return (int)i;
  return -1;
}

static int is_login_alias(const char *a) {
  return login_alias(a) >= 0;
}

static const char *login_provider(const char *a) {
  for (int i = 0; cpx_login_providers[i]; i++)
    if (strcmp(a, cpx_login_providers[i]) == 0)
      return cpx_login_providers[i];
  return NULL;
}

static int cmd_login(int argc, char **argv, int start, const char *argv0) {
  cpx_login_opts_t o;
  cpx_worker_t w;
  const char *config = NULL, *v;
  int bad = 0, rc;

  memset(&o, 0, sizeof(o));
  for (int i = start; i < argc && !bad; i++) {
    const char *a = argv[i];
    char *end;
    int k;
    if ((k = login_alias(a)) >= 0) {
      o.provider = login_aliases[k].provider;
      o.device |= login_aliases[k].device;
      o.cookie |= login_aliases[k].cookie;
    } else if (is_flag(a, "device")) {
      o.device = 1;
    } else if (is_flag(a, "cookie")) {
      o.cookie = 1;
    } else if ((v = flag_value(argc, argv, &i, "project-id", &bad)) ||
               (!bad && (v = flag_value(argc, argv, &i, "project_id", &bad)))) {
      o.project_id = v;
    } else if (is_flag(a, "no-browser")) {
      o.no_browser = 1;
    } else if ((v = flag_value(argc, argv, &i, "callback-port", &bad)) ||
               (!bad && (v = flag_value(argc, argv, &i, "oauth-callback-port",
                                        &bad)))) {
      long p = strtol(v, &end, 10);
      if (*end || p < 1 || p > 65535) {
        fprintf(stderr, "cliproxy: bad port '%s' (1-65535)\n", v);
        return 2;
      }
      o.port = (int)p;
    } else if (!bad && (v = flag_value(argc, argv, &i, "timeout", &bad))) {
      double t = strtod(v, &end);
      if (*end || !(t > 0) || t > 86400) {
        fprintf(stderr, "cliproxy: bad timeout '%s' (seconds, 1-86400)\n", v);
        return 2;
      }
      o.timeout = t;
    } else if (!bad && (v = flag_value(argc, argv, &i, "config", &bad))) {
      config = v;
    } else if (!bad && !o.provider && login_provider(a)) {
      o.provider = login_provider(a);
    } else if (!bad && (is_flag(a, "h") || is_flag(a, "help"))) {
      usage(stdout);
      return 0;
    } else if (!bad) {
      fprintf(stderr, "cliproxy login: unknown argument '%s' (see --help)\n",
              a);
      return 2;
    }
  }
  if (bad)
    return 2;
  if (!o.provider) {
    fprintf(stderr, "cliproxy login: which account? cliproxy login "
                    "claude|codex|gemini|antigravity|qwen|iflow\n");
    return 2;
  }
  /* Which provider has which mode is rt.login's to say; these two are
   * plain command-line mistakes. */
  if (o.device && strcmp(o.provider, "codex") != 0) {
    fprintf(stderr, "cliproxy login: --device is for codex only\n");
    return 2;
  }
  if (o.cookie && strcmp(o.provider, "iflow") != 0) {
    fprintf(stderr, "cliproxy login: --cookie is for iflow only\n");
    return 2;
  }
  if (o.project_id && strcmp(o.provider, "gemini") != 0) {
    fprintf(stderr, "cliproxy login: --project-id is for gemini only\n");
    return 2;
  }
  /* -config, the file and lua/ as for check and doctor. */
  {
    char *cargv[4] = {argv[0], "login", "-config",
                      (char *)(config ? config : "config.yaml")};
    if ((rc = cli_worker(4, cargv, argv0, &w)) != 0)
      return rc;
  }
  return cpx_login_run(&o, w.config_path, w.lua_dir);
}

/* ---- reload and drain --------------------------------------------------- */

/* logging-to-file: logs/ beside config.yaml (CLIProxyAPI's main.log). */
static void apply_log_file(const cpx_settings_t *s, const char *config_path) {
  char dir[PATH_MAX], tmp[PATH_MAX];
  int rc;
  if (!s->logging_to_file) {
    cpx_log_to_file(NULL, 0);
    return;
  }
  snprintf(tmp, sizeof(tmp), "%s", config_path);
  snprintf(dir, sizeof(dir), "%s/logs", dirname(tmp));
  rc = cpx_log_to_file(dir, s->logs_max_total_mb * 1024 * 1024);
  if (rc != 0)
    cpx_log_warn(NULL, "logging-to-file: cannot write %s/main.log: %s", dir,
                 cpx_strerror(rc));
}

static void apply_log_level(const cpx_settings_t *s) {
  cpx_log_set_level(s->debug ? CPX_LOG_DEBUG : CPX_LOG_INFO);
}

/* Builds a new generation for one worker and swaps it in if it loaded. */
/* The fast path's upstream timeouts are the libcurl client's; an idle
 * pooled connection lives as long as an idle client connection. */
static void h1_timeouts(const cpx_settings_t *s, cpx_h1_timeouts_t *to) {
  to->connect_ms = s->upstream_connect_ms;
  to->first_byte_ms = s->upstream_first_byte_ms;
  to->idle_ms = s->upstream_idle_ms;
  to->keepalive_ms = s->server.keepalive_timeout_ms;
}

static int reload_worker(worker_t *wk, const char *why) {
  cpx_worker_t *w = &wk->w;
  cpx_vm_t *vm, *old = w->vm;
  char err[4096];
  uint64_t t0 = uv_hrtime();

  if (cpx_vm_new(w, w->config_path, &vm, err, sizeof(err)) != 0) {
    cpx_log_error(NULL, "reload (%s) rejected, keeping generation %u: %s", why,
                  old->gen, err);
    return -1;
  }
  if (w->id == 0) {
    if (strcmp(vm->settings.server.host, old->settings.server.host) != 0 ||
        vm->settings.server.port != old->settings.server.port ||
        vm->settings.tls_enable != old->settings.tls_enable ||
        strcmp(vm->settings.tls_cert, old->settings.tls_cert) != 0 ||
        strcmp(vm->settings.tls_key, old->settings.tls_key) != 0)
      cpx_log_warn(NULL,
                   "host, port or tls changed: restart cliproxy to apply");
    if (vm->settings.workers != old->settings.workers)
      cpx_log_warn(NULL, "workers changed: restart cliproxy to apply");
    apply_log_level(&vm->settings);
    apply_log_file(&vm->settings, w->config_path);
  }
  if (strcmp(vm->settings.upstream_ca_file, old->settings.upstream_ca_file) !=
          0 &&
      cpx_h1_pool_set_ca(&w->h1, vm->settings.upstream_ca_file, err,
                         sizeof(err)) != 0) {
    cpx_log_error(NULL,
                  "reload (%s) rejected, keeping generation %u: "
                  "upstream-ca-file: %s",
                  why, old->gen, err);
    cpx_vm_unref(vm);
    return -1;
  }
  w->vm = vm;
  cpx_server_update_config(&w->server, &vm->settings.server);
  cpx_upstream_set_proxy(&w->upstream, vm->settings.proxy_url);
  cpx_upstream_set_ca(&w->upstream, vm->settings.upstream_ca_file);
  {
    cpx_h1_timeouts_t to;
    h1_timeouts(&vm->settings, &to);
    cpx_h1_pool_set_timeouts(&w->h1, &to);
  }
  cpx_log_info(NULL, "reloaded (%s): worker %d generation %u in %.1f ms", why,
               w->id, vm->gen, (double)(uv_hrtime() - t0) / 1e6);
  /* The old generation's tasks end (its requests still finish on it), then
   * the new one starts its own. */
  cpx_vm_retire(old, "generation retired");
  cpx_vm_init_worker(vm);
  cpx_vm_unref(old);
  return 0;
}

static void broadcast(app_t *app, unsigned cmd) {
  for (int i = 1; i < app->nworkers; i++) {
    atomic_fetch_or(&app->workers[i].cmds, cmd);
    uv_async_send(&app->workers[i].async);
  }
}

/* Worker 0 decides; the others follow only when the new setup loaded. */
static void reload(app_t *app, const char *why) {
  if (app->stopping)
    return;
  if (reload_worker(&app->workers[0], why) == 0)
    broadcast(app, CMD_RELOAD);
}

static void on_debounce(uv_timer_t *t) {
  app_t *app = t->data;
  struct stat st;
  if (stat(app->workers[0].w.config_path, &st) != 0)
    return; /* mid-rename: the next event brings it back */
  if (st.st_mtim.tv_sec == app->cfg_st.st_mtim.tv_sec &&
      st.st_mtim.tv_nsec == app->cfg_st.st_mtim.tv_nsec &&
      st.st_size == app->cfg_st.st_size && st.st_ino == app->cfg_st.st_ino)
    return;
  app->cfg_st = st;
  reload(app, "config file changed");
  watch_scripts(app);
}

static void on_config_event(uv_fs_event_t *h, const char *filename, int events,
                            int status) {
  app_t *app = h->data;
  char base[PATH_MAX];
  CPX_UNUSED(events);
  if (status < 0)
    return;
  snprintf(base, sizeof(base), "%s", app->workers[0].w.config_path);
  /* Editors replace files by rename: watch the directory, filter by name. */
  if (filename && strcmp(filename, basename(base)) != 0)
    return;
  uv_timer_start(&app->debounce, on_debounce, 200, 0);
}

static void on_close_noop(uv_handle_t *h) {
  CPX_UNUSED(h);
}

/* Keeps the pool's cooldowns in auth-dir (cpx_pool_file.c) when they
 * changed since the last save; also once more at exit. */
static void save_pool(app_t *app) {
  cpx_store_t *s = cpx_store_current();
  uint64_t c = cpx_pool_changes(cpx_pool_global());
  int rc;
  if (!s || c == app->pool_saved)
    return;
  rc = cpx_pool_save_file(cpx_pool_global(), cpx_store_dir(s));
  if (rc == 0) {
    app->pool_saved = c;
  } else if (!app->pool_save_failed) {
    app->pool_save_failed = 1;
    cpx_log_warn(NULL, "cannot keep cooldowns in %s/%s: %s", cpx_store_dir(s),
                 CPX_POOL_FILE, cpx_strerror(rc));
  }
}

static void on_pool_save(uv_timer_t *t) {
  save_pool(t->data);
}

static void on_log_flush(uv_timer_t *t) {
  CPX_UNUSED(t);
  cpx_log_flush();
  cpx_log_rotate_check();
}

static void on_close_free(uv_handle_t *h) {
  free(h);
}

static void on_script_debounce(uv_timer_t *t) {
  app_t *app = t->data;
  reload(app, "script changed");
  /* New lua.paths or new subdirectories: watch what the config says now. */
  watch_scripts(app);
}

static void on_script_event(uv_fs_event_t *h, const char *filename, int events,
                            int status) {
  app_t *app = h->data;
  size_t n;
  CPX_UNUSED(events);
  if (status < 0 || app->stopping)
    return;
  /* Only Lua sources and new directories matter, not editors' swap files. */
  if (filename) {
    n = strlen(filename);
    if (n < 4 || strcmp(filename + n - 4, ".lua") != 0) {
      struct stat st;
      char p[PATH_MAX];
      snprintf(p, sizeof(p), "%s/%s", h->path ? h->path : ".", filename);
      if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
        return;
    }
  }
  uv_timer_start(&app->script_debounce, on_script_debounce, 200, 0);
}

static void add_script_watch(app_t *app, const char *dir, int depth) {
  uv_fs_event_t *h;
  uv_fs_t req;
  uv_dirent_t ent;

  if (app->nscript_watch >= MAX_SCRIPT_WATCHES || depth > 4)
    return;
  h = malloc(sizeof(*h));
  if (!h)
    return;
  if (uv_fs_event_init(&app->workers[0].loop, h) != 0) {
    free(h);
    return;
  }
  h->data = app;
  if (uv_fs_event_start(h, on_script_event, dir, 0) != 0) {
    uv_close((uv_handle_t *)h, on_close_free);
    return;
  }
  app->script_watch[app->nscript_watch++] = h;
  if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
    uv_fs_req_cleanup(&req);
    return;
  }
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    if (ent.type == UV_DIRENT_DIR && ent.name[0] != '.') {
      char sub[PATH_MAX];
      snprintf(sub, sizeof(sub), "%s/%s", dir, ent.name);
      add_script_watch(app, sub, depth + 1);
    }
  }
  uv_fs_req_cleanup(&req);
}

/* (Re)builds the watches over every script directory of worker 0's
 * generation: the lua.paths entries, then the built-in lua/. */
static void watch_scripts(app_t *app) {
  lua_State *L = app->workers[0].w.vm->L;
  int n;

  for (int i = 0; i < app->nscript_watch; i++)
    uv_close((uv_handle_t *)app->script_watch[i], on_close_free);
  app->nscript_watch = 0;
  if (app->stopping)
    return;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.paths");
  n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    if (lua_isstring(L, -1))
      add_script_watch(app, lua_tostring(L, -1), 0);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* A worker with no request left closes its handles and leaves its loop. */
static void on_drained(cpx_server_t *srv) {
  worker_t *wk = srv->data;
  app_t *app = wk->app;
  if (wk->drained)
    return;
  wk->drained = 1;
  cpx_server_close(&wk->w.server);
  cpx_redirect_close_loop(&wk->loop); /* OAuth forwarders (is_webui) */
  uv_close((uv_handle_t *)&wk->async, on_close_noop);
  if (wk->w.id == 0) {
    cpx_log_info(NULL, "drained: exiting");
    uv_close((uv_handle_t *)&app->sig_term, on_close_noop);
    uv_close((uv_handle_t *)&app->sig_int, on_close_noop);
    uv_close((uv_handle_t *)&app->sig_hup, on_close_noop);
    uv_close((uv_handle_t *)&app->debounce, on_close_noop);
    uv_close((uv_handle_t *)&app->script_debounce, on_close_noop);
    uv_close((uv_handle_t *)&app->log_flush, on_close_noop);
    uv_close((uv_handle_t *)&app->pool_save, on_close_noop);
    save_pool(app);
    for (int i = 0; i < app->nscript_watch; i++)
      uv_close((uv_handle_t *)app->script_watch[i], on_close_free);
    app->nscript_watch = 0;
    if (app->watching)
      uv_close((uv_handle_t *)&app->watch, on_close_noop);
  }
  uv_stop(&wk->loop);
}

static void on_async(uv_async_t *h) {
  worker_t *wk = h->data;
  unsigned cmds = atomic_exchange(&wk->cmds, 0);
  if (cmds & CMD_RELOAD)
    reload_worker(wk, "reload");
  if (cmds & CMD_DRAIN)
    wk->draining = 1;
  /* Only this worker's generation is full, and a reload since then has
   * replaced it already. app->stopping is worker 0's (its thread); the
   * others go by CMD_DRAIN. */
  if ((cmds & CMD_RECYCLE) && !wk->draining &&
      !(wk->w.id == 0 && wk->app->stopping) && wk->w.vm->gen == wk->recycle_gen)
    reload_worker(wk, "Lua memory cap");
  if (cmds & CMD_DRAIN) {
    cpx_vm_retire(wk->w.vm, "server shutting down");
    cpx_server_drain(&wk->w.server);
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  app_t *app = h->data;
  if (signum == SIGHUP) {
    reload(app, "SIGHUP");
    watch_scripts(app);
    return;
  }
  if (app->stopping) {
    cpx_log_warn(NULL, "second signal: exiting now");
    cpx_log_flush();
    _exit(app->exit_code);
  }
  app->stopping = 1;
  cpx_log_info(NULL, "%s: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  broadcast(app, CMD_DRAIN);
  cpx_vm_retire(app->workers[0].w.vm, "server shutting down");
  cpx_server_drain(&app->workers[0].w.server);
}

/* w->recycle: from this worker's own loop, run on its next iteration
 * (not inside the resume that found the generation full). */
static void recycle_vm(cpx_worker_t *w, unsigned gen) {
  worker_t *wk = (worker_t *)w;
  wk->recycle_gen = gen;
  atomic_fetch_or(&wk->cmds, CMD_RECYCLE);
  uv_async_send(&wk->async);
}

/* Sets up one worker: loop, Lua generation, upstream client. */
static int worker_init(app_t *app, int id, const char *config_path,
                       const char *lua_dir) {
  worker_t *wk = &app->workers[id];
  cpx_worker_t *w = &wk->w;
  char err[4096];

  wk->app = app;
  w->id = id;
  snprintf(w->config_path, sizeof(w->config_path), "%s", config_path);
  snprintf(w->lua_dir, sizeof(w->lua_dir), "%s", lua_dir);
  uv_loop_init(&wk->loop);
  w->loop = &wk->loop;
  cpx_worker_init_lua(w);
  if (cpx_vm_new(w, w->config_path, &w->vm, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  if (cpx_upstream_init(&w->upstream, w->loop, w->vm->settings.proxy_url) !=
      0) {
    fprintf(stderr, "cliproxy: cannot initialise libcurl\n");
    return -1;
  }
  {
    cpx_h1_timeouts_t to;
    h1_timeouts(&w->vm->settings, &to);
    cpx_h1_pool_init(&w->h1, w->loop, &to);
  }
  /* cpx.fetch shares the fast path's pooled connections (direct ones). */
  cpx_upstream_use_h1(&w->upstream, &w->h1);
  cpx_upstream_set_ca(&w->upstream, w->vm->settings.upstream_ca_file);
  /* Read now, not at the first https request: the file (or the system
   * bundle) is parsed once, off any request's path. */
  if (cpx_h1_pool_set_ca(&w->h1, w->vm->settings.upstream_ca_file, err,
                         sizeof(err)) != 0) {
    fprintf(stderr, "%s: upstream-ca-file: %s\n", w->config_path, err);
    return -1;
  }
  uv_async_init(w->loop, &wk->async, on_async);
  wk->async.data = wk;
  w->recycle = recycle_vm;
  return 0;
}

/* Opens the worker's listener; with several workers each owns one on the
 * same port (SO_REUSEPORT) and the kernel spreads connections. */
static int worker_listen(app_t *app, int id, int nworkers) {
  worker_t *wk = &app->workers[id];
  cpx_worker_t *w = &wk->w;
  cpx_server_config_t sc = w->vm->settings.server;
  char err[4096];

  sc.reuse_port = nworkers > 1;
  cpx_server_init(&w->server, w->loop, &sc, app->tls);
  w->server.on_request = cpx_lua_on_request;
  w->server.on_drained = on_drained;
  w->server.data = wk;
  if (cpx_server_listen(&w->server, err, sizeof(err)) != 0) {
    fprintf(stderr, "cliproxy: %s\n", err);
    return -1;
  }
  return 0;
}

static void worker_finish(worker_t *wk) {
  cpx_worker_close_lua(&wk->w);
  cpx_upstream_close(&wk->w.upstream);
  cpx_h1_pool_close(&wk->w.h1);
  uv_run(&wk->loop, UV_RUN_NOWAIT);
  uv_run(&wk->loop, UV_RUN_NOWAIT);
}

static void worker_thread(void *arg) {
  worker_t *wk = arg;
  cpx_vm_init_worker(wk->w.vm);
  uv_run(&wk->loop, UV_RUN_DEFAULT);
  worker_finish(wk);
}

/* Start-up failed after `ninit` workers got a Lua generation: close those,
 * so that what the VMs hold is freed (LeakSanitizer cannot see into
 * LuaJIT's own memory, so an open VM shows up as leaked blocks). */
static int startup_failed(app_t *app, int ninit) {
  for (int i = 0; i < ninit; i++)
    cpx_worker_close_lua(&app->workers[i].w);
  return 1;
}

static int run_server(const char *argv0, const char *path) {
  static app_t app;
  char config_path[4096], lua_dir[4096], err[4096];
  worker_t *w0 = &app.workers[0];
  int n;

  signal(SIGPIPE, SIG_IGN);
  umask(077);
  if (resolve_config(path, config_path, sizeof(config_path)) != 0)
    return 1;
  if (cpx_lua_find_builtin_dir(argv0, lua_dir, sizeof(lua_dir)) != 0) {
    fprintf(stderr, "cliproxy: cannot find the built-in lua/ directory "
                    "(set CPX_LUA_DIR)\n");
    return 1;
  }
  /* libcurl's global state must be set up before any thread uses it. */
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (worker_init(&app, 0, config_path, lua_dir) != 0)
    return 1;
  apply_log_level(&w0->w.vm->settings);
  apply_log_file(&w0->w.vm->settings, w0->w.config_path);
  n = w0->w.vm->settings.workers;
  if (n > MAX_WORKERS)
    n = MAX_WORKERS;
  if (w0->w.vm->settings.tls_enable &&
      cpx_tls_ctx_new(&app.tls, w0->w.vm->settings.tls_cert,
                      w0->w.vm->settings.tls_key, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s: %s\n", config_path, err);
    return startup_failed(&app, 1);
  }
  if (worker_listen(&app, 0, n) != 0)
    return startup_failed(&app, 1);
  for (int i = 1; i < n; i++) {
    if (worker_init(&app, i, config_path, lua_dir) != 0)
      return startup_failed(&app, i);
    if (worker_listen(&app, i, n) != 0)
      return startup_failed(&app, i + 1);
  }
  app.nworkers = n;
  uv_signal_init(&w0->loop, &app.sig_term);
  uv_signal_init(&w0->loop, &app.sig_int);
  uv_signal_init(&w0->loop, &app.sig_hup);
  app.sig_term.data = app.sig_int.data = app.sig_hup.data = &app;
  uv_signal_start(&app.sig_term, on_signal, SIGTERM);
  uv_signal_start(&app.sig_int, on_signal, SIGINT);
  uv_signal_start(&app.sig_hup, on_signal, SIGHUP);
  uv_timer_init(&w0->loop, &app.debounce);
  app.debounce.data = &app;
  uv_timer_init(&w0->loop, &app.script_debounce);
  app.script_debounce.data = &app;
  uv_timer_init(&w0->loop, &app.log_flush);
  uv_timer_start(&app.log_flush, on_log_flush, 100, 100);
  uv_unref((uv_handle_t *)&app.log_flush);
  uv_timer_init(&w0->loop, &app.pool_save);
  app.pool_save.data = &app;
  app.pool_saved = cpx_pool_changes(cpx_pool_global());
  uv_timer_start(&app.pool_save, on_pool_save, 2000, 2000);
  uv_unref((uv_handle_t *)&app.pool_save);
  cpx_log_buffered();
  watch_scripts(&app);
  stat(config_path, &app.cfg_st);
  {
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", config_path);
    if (uv_fs_event_init(&w0->loop, &app.watch) == 0 &&
        uv_fs_event_start(&app.watch, on_config_event, dirname(dir), 0) == 0) {
      app.watch.data = &app;
      app.watching = 1;
    }
  }
  for (int i = 1; i < n; i++) {
    if (uv_thread_create(&app.workers[i].tid, worker_thread, &app.workers[i]) ==
        0)
      app.workers[i].started = 1;
  }
  cpx_log_info(NULL,
               "cliproxy %s listening on %s%s:%d with %d worker(s) (config %s, "
               "lua %s)",
               CPX_VERSION,
               w0->w.vm->settings.tls_enable ? "https://" : "http://",
               w0->w.server.cfg.host[0] ? w0->w.server.cfg.host : "0.0.0.0",
               w0->w.server.cfg.port, n, config_path, lua_dir);
  {
    /* The address clients on this machine use: a wildcard bind is reached
     * through loopback. */
    char url[320];
    const char *h = w0->w.server.cfg.host;
    int wild = !h[0] || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0;
    int v6 = !wild && strchr(h, ':') != NULL;
    snprintf(url, sizeof(url), "%s%s%s%s:%d",
             w0->w.vm->settings.tls_enable ? "https://" : "http://",
             v6 ? "[" : "", wild ? "127.0.0.1" : h, v6 ? "]" : "",
             w0->w.server.cfg.port);
    cpx_vm_banner(w0->w.vm, url);
  }
  cpx_vm_init_worker(w0->w.vm);
  uv_run(&w0->loop, UV_RUN_DEFAULT);
  worker_finish(w0);
  for (int i = 1; i < n; i++)
    if (app.workers[i].started)
      uv_thread_join(&app.workers[i].tid);
  /* Every worker has handed its last records over: write them. */
  cpx_usage_close();
  cpx_otlp_close();
  if (app.tls)
    cpx_tls_ctx_free(app.tls);
  cpx_log_flush();
  return app.exit_code;
}

/* The rank files live in data/ beside lua/ (the source tree, or
 * <prefix>/share/cliproxy after cmake --install), wherever that is. */
static void set_token_data_dir(const char *argv0) {
  char lua_dir[4096], data[4096 + 16];
  struct stat st;
  if (getenv("CPX_DATA_DIR") ||
      cpx_lua_find_builtin_dir(argv0, lua_dir, sizeof(lua_dir)) != 0)
    return;
  snprintf(data, sizeof(data), "%s/../data", lua_dir);
  if (stat(data, &st) == 0 && S_ISDIR(st.st_mode)) {
    char real[PATH_MAX];
    cpx_tokens_set_data_dir(realpath(data, real) ? real : data);
  }
}

int main(int argc, char **argv) {
  const char *path = "config.yaml";

  set_token_data_dir(argv[0]);

  if (argc > 1 && strcmp(argv[1], "check") == 0)
    return cmd_check(argc, argv, argv[0]);
  if (argc > 1 && strcmp(argv[1], "doctor") == 0)
    return cmd_doctor(argc, argv, argv[0]);
  if (argc > 1 && strcmp(argv[1], "login") == 0)
    return cmd_login(argc, argv, 2, argv[0]);
  for (int i = 1; i < argc; i++)
    if (is_login_alias(argv[i]))
      return cmd_login(argc, argv, 1, argv[0]);
  if (argc > 1 && strcmp(argv[1], "tokens") == 0)
    return cpx_tokens_cli(argc - 1, argv + 1);
  if (argc > 1 &&
      (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-v") == 0)) {
    printf("cliproxy %s\n", CPX_VERSION);
    return 0;
  }
  if (parse_config_flag(argc, argv, 1, &path) != 0)
    return 2;
  return run_server(argv[0], path);
}
