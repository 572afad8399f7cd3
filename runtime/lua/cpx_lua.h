/* cpx_lua.h: LuaJIT VM generations, the module loader and sandbox, and the
 * entry points of the request coroutines.
 *
 * A generation (cpx_vm_t) is one lua_State with the config loaded and every
 * module loaded and validated. A worker serves new requests on its current
 * generation; a reload builds a whole new generation and swaps it in only
 * if it built cleanly. Each request pins the generation it started on, so
 * in-flight requests finish on the old one, which is closed when its last
 * request ends.
 *
 * The request coroutines themselves live in cpx_co.c (the only place that
 * resumes them) and the binding files beside it (see cpx_lua_int.h).
 */
#ifndef CPX_LUA_H
#define CPX_LUA_H

#include <lua.h>

#include "cpx.h"
#include "cpx_memcap.h"
#include "cpx_server.h"

typedef struct cpx_worker_s cpx_worker_t;
typedef struct cpx_vm_s cpx_vm_t;

/* Settings the C runtime needs, read from the validated config. */
typedef struct {
  cpx_server_config_t server;
  int tls_enable;
  char tls_cert[1024];
  char tls_key[1024];
  int debug;
  int logging_to_file;      /* logs/main.log beside config.yaml */
  size_t logs_max_total_mb; /* 0: unlimited */
  char proxy_url[1024];
  char upstream_ca_file[1024]; /* "" : the system trust store */
  int workers;
  size_t lua_memory_limit;
  int lua_memory_recycle; /* lua.memory-recycle */
  uint64_t upstream_connect_ms;
  uint64_t upstream_first_byte_ms;
  uint64_t upstream_idle_ms;
  size_t upstream_max_body;
  int max_timers; /* lua.max-timers: pending timers per worker */
} cpx_settings_t;

struct cpx_vm_s {
  lua_State *L;
  int refs; /* the worker's reference + one per request and task */
  unsigned gen;
  cpx_memcap_t cap; /* lua.memory-limit-mb (cpx_memcap.h) */
  int depth;        /* entries into the VM under way (cpx_vm_enter) */
  int cap_reported; /* the cap's refusal was logged for this generation */
  int recycling;    /* a fresh generation was asked for (w->recycle) */
  size_t boot_used; /* what it held once booted (recycling cannot go below) */
  uint64_t last_full_gc; /* loop time (ms) of the cap's last full collection */
  size_t full_gc_left;   /* what that collection left */
  /* > 0 while the host (C) works on the VM outside any protected call: the
   * cap does not apply then, so a full VM can never make an unprotected API
   * call fail (which would be a panic). Scripts always run under the cap. */
  int host;
  int handle_ref;          /* rt.server handle function */
  int app_ref;             /* the table rt.boot.start returned */
  struct cpx_lane_s *lane; /* the fast path's routes (owned; may be NULL) */
  unsigned rec_native;     /* rt.record's subscribers (cpx.lane.records) */
  cpx_worker_t *worker;
  cpx_settings_t settings;
  /* background tasks (cpx_task.c): created, pending or running ones */
  struct cpx_task_s *tasks;
  int live;            /* serving on its worker: tasks may start */
  const char *retired; /* static reason once retired; no new task */
};

/* Locates the built-in lua/ directory next to the executable, in the
 * source tree or in the install data dir. Returns 0 or CPX_EINVAL. */
int cpx_lua_find_builtin_dir(const char *argv0, char *out, size_t outlen);

/* Builds a generation from the config file. On failure returns a negative
 * code with "file:line: reason" in err. check_only builds without a
 * worker (for `cliproxy check`). */
int cpx_vm_new(cpx_worker_t *w, const char *config_path, cpx_vm_t **out,
               char *err, size_t errlen);
void cpx_vm_ref(cpx_vm_t *vm);
/* Brackets every entry of C into the VM's Lua code (a resume, a pcall).
 * The outermost entry and exit are the cap's safe points: the JIT is
 * switched off near the cap, a refusal is logged once per generation
 * (which generation, and how to raise the cap), and a generation that
 * stays at the cap after a full collection asks its worker for a fresh
 * one (w->recycle). */
void cpx_vm_enter(cpx_vm_t *vm);
void cpx_vm_leave(cpx_vm_t *vm);
/* Logs the start-up banner (rt.banner) of a generation: what is served and
 * how to point clients at base_url. A script error is logged, not fatal. */
void cpx_vm_banner(cpx_vm_t *vm, const char *base_url);

/* `cliproxy doctor`'s findings from Lua (rt.doctor): checks and the upstream
 * origins to probe. Filled by cpx_vm_doctor, freed by cpx_doctor_free. */
typedef struct {
  char level[8]; /* "ok", "warn", "error" */
  char text[768];
  char hint[256];
} cpx_doctor_check_t;
typedef struct {
  char name[256];
  char url[512];
  char proxy[512]; /* empty: the global proxy-url */
} cpx_doctor_upstream_t;
typedef struct {
  cpx_doctor_check_t *checks;
  int nchecks;
  cpx_doctor_upstream_t *upstreams;
  int nupstreams;
} cpx_doctor_t;
int cpx_vm_doctor(cpx_vm_t *vm, cpx_doctor_t *out, char *err, size_t errlen);
void cpx_doctor_free(cpx_doctor_t *d);
void cpx_vm_unref(cpx_vm_t *vm);

/* Starts a generation's life on its worker, on the worker's loop thread,
 * once it serves (at start-up, and after a reload swapped it in): tasks
 * may be created from then on, and the app's init_worker() runs (rt.boot:
 * the refresh scheduler, middleware init_worker functions). Its errors are
 * logged. */
void cpx_vm_init_worker(cpx_vm_t *vm);
/* Ends a generation's tasks (see cpx_task.h): at a reload for the old
 * generation ("generation retired"), at the drain for the current one
 * ("server shutting down"). */
void cpx_vm_retire(cpx_vm_t *vm, const char *reason);

/* The server's request callback: the C fast path when it can take the
 * request (cpx_lane.c), else rt.server.handle in a coroutine. */
void cpx_lua_on_request(cpx_server_t *srv, cpx_request_t *r);
/* Runs rt.server.handle(req, info) for r on generation vm; push_extra (may
 * be NULL) can add fields to the info table at the top of L's stack (the
 * fast path hands over its first attempt this way). */
void cpx__lua_start(cpx_worker_t *w, cpx_vm_t *vm, cpx_request_t *r,
                    void (*push_extra)(lua_State *L, void *ud), void *ud);
/* cpx_secure_equal: runtime/core/cpx_access.h */

/* `cpx.panel` (the control panel's static files; cpx_panel.c, registered
 * through cpx_bindings.h). cpx_panel_name_ok(name) is 1 for a name it
 * would read: [A-Za-z0-9_.-] components, none starting with '.'. */
int cpx_panel_name_ok(const char *name);
/* A blocking job for libuv's threadpool that the calling request coroutine
 * waits for (bcrypt, file writes: anything that must not run on the loop).
 * work() runs on a pool thread and must not touch Lua; push() then runs on
 * the loop and pushes the results onto L, returning their count; done()
 * frees the job (always called once, also when the request went away and
 * push() was skipped). Outside a request's coroutine (module load, busted)
 * work() and push() run at once on the calling thread. Use it as
 * `return cpx_lua_await(L, job);` from a lua_CFunction. */
typedef struct cpx_lua_job_s cpx_lua_job_t;
struct cpx_lua_job_s {
  void (*work)(cpx_lua_job_t *job);
  int (*push)(lua_State *L, cpx_lua_job_t *job);
  void (*done)(cpx_lua_job_t *job);
  uv_work_t req; /* private */
  void *lr;      /* private */
};
int cpx_lua_await(lua_State *L, cpx_lua_job_t *job);
/* 1 when L is the coroutine of a request being served (so it may yield). */
int cpx_lua_in_request(lua_State *L);

/* Registers the request/upstream/log part of the `cpx` API into the table
 * at the top of the stack (cpx_co.c and the binding files it calls). */
void cpx__lua_api_register(lua_State *L);

#endif /* CPX_LUA_H */
